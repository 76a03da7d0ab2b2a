"""``farm submit``, ``farm results``, ``farm diff`` and ``farm download``: the CI client.

Exit codes (``submit --wait`` and ``results``): 0 every job passed; 1 a regression; 2 a failed job
or an infrastructure error (farm unreachable, API error, timeout). Progress goes to stderr, so
``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from farm.client.api import FINAL, FarmApiError, FarmClient, FarmClientError, FarmTimeoutError

EXIT_PASSED, EXIT_REGRESSED, EXIT_FAILED = 0, 1, 2
OUTCOME_EXIT = {
    "passed": EXIT_PASSED,
    "regressed": EXIT_REGRESSED,
    "failed": EXIT_FAILED,
    "pending": EXIT_FAILED,
}
PRECISION_CHOICES = ("fp32", "fp16", "bf16", "int8", "best")

stderr = Console(stderr=True, soft_wrap=True)  # messages are never hard-wrapped: CI logs get whole lines


def _client_settings(server: str | None, token: str | None) -> tuple[str, str | None]:
    """``--server``/``--token``, else FARM_SERVER/FARM_TOKEN (through the farm's settings)."""
    if server and token is not None:
        return server, token or None
    from farm.config import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    return server or settings.server, (token if token is not None else settings.token) or None


def server_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--server`` and ``--token`` (defaults from FARM_SERVER / FARM_TOKEN)."""
    command = click.option("--token", default=None, help="Bearer token (default: FARM_TOKEN).")(command)
    return click.option("--server", default=None, help="Farm URL (default: FARM_SERVER).")(command)


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _fail(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(EXIT_FAILED)


def ci_metadata() -> dict[str, str | None]:
    """Commit, branch and run URL from GitHub Actions or GitLab CI variables, when present."""
    env = os.environ
    run_url = None
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        run_url = f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return {
        "git_commit": env.get("GITHUB_SHA") or env.get("CI_COMMIT_SHA"),
        "branch": env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or env.get("CI_COMMIT_REF_NAME"),
        "ci_url": run_url or env.get("CI_JOB_URL"),
        "run_id": (
            f"github:{env['GITHUB_RUN_ID']}:{env.get('GITHUB_RUN_ATTEMPT', '1')}:{env.get('GITHUB_JOB', '')}"
            if env.get("GITHUB_RUN_ID")
            else (f"gitlab:{env['CI_JOB_ID']}" if env.get("CI_JOB_ID") else None)
        ),
    }


@click.command()
@click.argument("model_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@server_options
@click.option("--name", default=None, help="Model name (default: the file name without .onnx).")
@click.option("--profile", "profiles", multiple=True, required=True, help="Profile(s), e.g. cpu,nvidia-h200.")
@click.option("--precision", "precisions", multiple=True, default=("fp32",), show_default=True,
              help="Precision(s): fp32,fp16,bf16,int8,best.")  # fmt: skip
@click.option(
    "--batch", "batches", multiple=True, default=("1",), show_default=True, help="Batch size(s), e.g. 1,8."
)
@click.option(
    "--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="INT8 calibration .npz."
)
@click.option("--val", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Validation .npz.")
@click.option("--baseline", default=None, help="Judge against this version (number or label).")
@click.option("--baseline-branch", default=None, help="Judge against the newest version on this branch.")
@click.option("--version", "label", default=None, help="Label of the uploaded version (e.g. a tag).")
@click.option("--git-commit", default=None, help="Commit of the model (default: from CI variables).")
@click.option("--branch", default=None, help="Branch of the model (default: from CI variables).")
@click.option("--ci-url", default=None, help="URL of this CI run (default: from CI variables).")
@click.option("--threshold", type=float, default=None, help="Latency regression threshold in % (default 5).")
@click.option(
    "--accuracy-budget", "budgets", multiple=True, help="PRECISION:BUDGET, e.g. int8:cosine>=0.999."
)
@click.option("--calibrator", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default=None,
              help="INT8 calibration method.")  # fmt: skip
@click.option(
    "--benchmark",
    "benchmark_json",
    default=None,
    help='Benchmark settings as JSON, e.g. {"min_iterations": 50}.',
)
@click.option("--idempotency-key", default=None, help="Retry-safe key (default: derived from the CI run).")
@click.option("--wait/--no-wait", default=False, help="Wait for every job, show results, set the exit code.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report.")
@click.option("--download", "download_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Download every engine into this folder (sha256 verified).")  # fmt: skip
def submit_cmd(model_path: Path, server: str | None, token: str | None, name: str | None,
               profiles: tuple[str, ...], precisions: tuple[str, ...], batches: tuple[str, ...],
               calib: Path | None, val: Path | None, baseline: str | None, baseline_branch: str | None,
               label: str | None, git_commit: str | None, branch: str | None, ci_url: str | None,
               threshold: float | None, budgets: tuple[str, ...], calibrator: str | None,
               benchmark_json: str | None, idempotency_key: str | None, wait: bool, timeout: float,
               as_json: bool, junit: Path | None, download_dir: Path | None) -> None:  # fmt: skip
    """Upload MODEL.onnx and build it for each profile × precision × batch; with --wait, fail on regression.

    Exit code: 0 all passed, 1 a regression, 2 a failed job or an infrastructure error.
    """
    if baseline and baseline_branch:
        raise click.UsageError("pass --baseline or --baseline-branch, not both")
    try:
        batch_sizes = [int(b) for b in _split(batches)]
    except ValueError:
        raise click.BadParameter("batch sizes must be integers, e.g. 1,8", param_hint="--batch") from None
    wanted_precisions = _split(precisions)
    for precision in wanted_precisions:
        if precision not in PRECISION_CHOICES:
            raise click.BadParameter(
                f"{precision!r} is not one of {', '.join(PRECISION_CHOICES)}", param_hint="--precision"
            )
    options: dict[str, Any] = {}
    if baseline:
        options["baseline"] = {"version": baseline}
    if baseline_branch:
        options["baseline"] = {"branch": baseline_branch}
    if threshold is not None:
        options["latency_threshold_pct"] = threshold
    if calibrator:
        options["calibrator"] = calibrator
    if budgets:
        parsed: dict[str, list[str]] = {}
        for item in budgets:
            precision, sep, budget = item.partition(":")
            if not sep or not budget:
                raise click.BadParameter(f"{item!r}: use PRECISION:BUDGET", param_hint="--accuracy-budget")
            parsed.setdefault(precision, []).append(budget)
        options["accuracy_budgets"] = parsed
    if benchmark_json:
        try:
            options["benchmark"] = json.loads(benchmark_json)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--benchmark") from None

    server_url, token_value = _client_settings(server, token)
    client = FarmClient(server_url, token_value)
    ci = ci_metadata()
    try:
        stderr.print(f"uploading {model_path} to {server_url} …", highlight=False)
        upload = client.upload_model(
            model_path, name=name, label=label, git_commit=git_commit or ci["git_commit"],
            branch=branch or ci["branch"], ci_url=ci_url or ci["ci_url"],
        )  # fmt: skip
        version = upload["model_version"]
        model_name = version["model"]
        stderr.print(
            f"model {model_name} version {version['label']} (#{version['number']}, sha256 {version['sha256'][:12]}…)"
            + ("" if upload["created"] else " — already uploaded"),
            highlight=False,
        )
        dataset_id = calibration_id = None
        if val is not None:
            dataset_id = client.upload_dataset(val, model=model_name, version=version["number"])["id"]
        if calib is not None:
            calibration_id = client.upload_dataset(calib, model=model_name, version=version["number"])["id"]
        key = idempotency_key
        if key is None and ci["run_id"]:
            identity = json.dumps([ci["run_id"], version["sha256"], _split(profiles), wanted_precisions, batch_sizes,
                                   options, dataset_id, calibration_id], sort_keys=True)  # fmt: skip
            key = "ci-" + hashlib.sha256(identity.encode()).hexdigest()[:40]
        submission = client.submit(
            model_name, version=version["number"], profiles=_split(profiles), precisions=wanted_precisions,
            batch_sizes=batch_sizes, dataset_id=dataset_id, calibration_dataset_id=calibration_id,
            options=options, idempotency_key=key,
        )  # fmt: skip
        for warning in submission.get("warnings", []):
            stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)
        stderr.print(
            f"submission {submission['id']}: {len(submission['jobs'])} jobs "
            f"({client.server}/api/v1/submissions/{submission['id']})",
            highlight=False,
        )
        if not wait:
            if as_json:
                click.echo(json.dumps(submission, indent=2))
            return
        results = follow_submission(client, submission["id"], timeout=timeout)
    except FarmApiError as exc:
        _fail(_api_error_text(exc))
    except FarmTimeoutError as exc:
        _fail(f"{exc}; the jobs keep running on the farm")
    except FarmClientError as exc:
        _fail(str(exc))
    sys.exit(report(client, results, as_json=as_json, junit=junit, download_dir=download_dir))


def _api_error_text(exc: FarmApiError) -> str:
    field = exc.details.get("field")
    return f"{exc.message}" + (f" (field: {field})" if field else "") + f" [{exc.status} {exc.code}]"


def follow_submission(client: FarmClient, submission_id: int, *, timeout: float) -> dict[str, Any]:
    """Wait for a submission, showing its jobs on stderr; the results.

    On a terminal: a live table. In a CI log (not a terminal): one line whenever a job's state or
    step changes, so the log tells the story without redraws.
    """
    started = time.monotonic()
    if not stderr.is_terminal:
        last: dict[int, str] = {}

        def log_changes(submission: dict[str, Any]) -> None:
            for job in submission["jobs"]:
                line = _job_line(job)
                if last.get(job["id"]) != line:
                    last[job["id"]] = line
                    stderr.print(
                        f"[{time.monotonic() - started:5.0f} s] {line}", highlight=False, markup=False
                    )

        return client.wait_for_submission(submission_id, timeout=timeout, on_update=log_changes)
    with Live(Table(), console=stderr, refresh_per_second=4) as live:

        def update(submission: dict[str, Any]) -> None:
            live.update(progress_table(submission, time.monotonic() - started))

        return client.wait_for_submission(submission_id, timeout=timeout, on_update=update)


def _step(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    step = str(progress.get("step", ""))
    if progress.get("total"):
        step += f" {progress.get('done', 0)}/{progress['total']}"
    return step


def _job_line(job: dict[str, Any]) -> str:
    step = _step(job) if job["state"] not in FINAL else (job.get("verdict") or "")
    return (
        f"job {job['id']} {job['profile']} {job['precision']} batch {job['batch_size']}: {job['state']}"
        + (f" ({step})" if step else "")
    )


def progress_table(submission: dict[str, Any], elapsed: float) -> Table:
    """One line per job: profile, precision, batch, state, current step."""
    table = Table(title=f"submission {submission['id']} — {elapsed:.0f} s", title_justify="left")
    for column in ("job", "profile", "precision", "batch", "state", "step"):
        table.add_column(column)
    for job in submission["jobs"]:
        step = _step(job)
        color = {"succeeded": "green", "failed": "red", "cancelled": "red"}.get(job["state"], "yellow")
        table.add_row(str(job["id"]), job["profile"], str(job["precision"]), str(job["batch_size"]),
                      f"[{color}]{job['state']}[/]", step)  # fmt: skip
    return table


def results_table(results: dict[str, Any]) -> Table:
    """The results table: profile, precision, latency median and p99, change vs baseline, accuracy, verdict."""
    version = results["model_version"]
    table = Table(title=f"{results['model']} {version['label']} — {results['outcome']}", title_justify="left")
    for column in (
        "profile",
        "precision",
        "batch",
        "median ms",
        "p99 ms",
        "vs baseline",
        "cosine",
        "verdict",
    ):
        table.add_column(
            column, justify="right" if column not in ("profile", "precision", "verdict") else "left"
        )
    for row in results["rows"]:
        change = f"{row['change_pct']:+.1f}%" if row["change_pct"] is not None else "—"
        verdict = row["verdict"] or row["state"]
        color = {"regressed": "red", "failed": "red", "improved": "green"}.get(verdict, "")
        table.add_row(
            row["profile"], str(row["precision"]), str(row["batch_size"]), _num(row["median_ms"]), _num(row["p99_ms"]),
            change, _num(row["worst_cosine"], 5), f"[{color}]{verdict}[/]" if color else verdict,
        )  # fmt: skip
    return table


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report(
    client: FarmClient,
    results: dict[str, Any],
    *,
    as_json: bool,
    junit: Path | None,
    download_dir: Path | None,
) -> int:
    """Print the results, write the JUnit report, download engines; the exit code."""
    code = OUTCOME_EXIT[results["outcome"]]
    if download_dir is not None:
        try:
            for row in results["rows"]:
                engine = row["engine"]
                if engine is None:
                    continue
                target = (
                    download_dir
                    / f"{results['model']}-{row['profile']}-{row['precision']}-b{row['batch_size']}.engine"
                )
                client.download_engine(engine["id"], target, expected_sha256=engine["sha256"])
                row["engine"]["path"] = str(target)
                stderr.print(
                    f"downloaded {target} (sha256 {engine['sha256'][:12]}… verified)", highlight=False
                )
        except FarmClientError as exc:
            stderr.print(f"[bold red]error:[/] {exc}", highlight=False)
            code = EXIT_FAILED
    if junit is not None:
        write_junit(results, junit)
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        Console().print(results_table(results))
        for row in results["rows"]:
            if row["error"]:
                stderr.print(
                    f"job {row['job_id']} ({row['profile']} {row['precision']}): {row['error']}",
                    highlight=False,
                )
    return code


def write_junit(results: dict[str, Any], path: Path) -> None:
    """A JUnit XML report: one test case per job; a regression is a failure, a failed job an error."""
    rows = results["rows"]
    suite = ET.Element(
        "testsuite",
        name=f"farm.{results['model']}",
        tests=str(len(rows)),
        failures=str(sum(1 for row in rows if row["verdict"] == "regressed")),
        errors=str(sum(1 for row in rows if row["verdict"] == "failed" or row["state"] != "succeeded")),
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="submission_id", value=str(results["submission_id"]))
    ET.SubElement(properties, "property", name="model_version", value=str(results["model_version"]["label"]))
    for row in rows:
        case = ET.SubElement(
            suite, "testcase", classname=f"{results['model']}.{row['profile']}",
            name=f"{row['precision']}-batch{row['batch_size']}", time="0",
        )  # fmt: skip
        summary = (
            f"median {_num(row['median_ms'])} ms, p99 {_num(row['p99_ms'])} ms, change "
            f"{_num(row['change_pct'], 2)} %, worst cosine {_num(row['worst_cosine'], 6)}, verdict {row['verdict']}"
        )
        if row["verdict"] == "failed" or row["state"] != "succeeded":
            error = ET.SubElement(
                case, "error", type=row["verdict"] or row["state"], message=(row["error"] or summary)[:500]
            )
            error.text = row["error"] or summary
        elif row["verdict"] == "regressed":
            failure = ET.SubElement(case, "failure", type="regression", message=summary)
            failure.text = summary
        ET.SubElement(case, "system-out").text = summary
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


@click.command()
@click.argument("submission_id", type=int)
@server_options
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Write a JUnit XML report.")
@click.option("--wait/--no-wait", default=False, help="Wait until every job finished.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
def results_cmd(submission_id: int, server: str | None, token: str | None, as_json: bool, junit: Path | None,
                wait: bool, timeout: float) -> None:  # fmt: skip
    """Show a submission's results; exit 0 passed, 1 regression, 2 failed (or not finished)."""
    client = FarmClient(*_client_settings(server, token))
    try:
        results = (
            follow_submission(client, submission_id, timeout=timeout)
            if wait
            else client.results(submission_id)
        )
    except FarmApiError as exc:
        _fail(_api_error_text(exc))
    except FarmClientError as exc:
        _fail(str(exc))
    sys.exit(report(client, results, as_json=as_json, junit=junit, download_dir=None))


@click.command()
@server_options
@click.option(
    "--jobs", "job_ids", nargs=2, type=int, default=None, help="Compare the engines of two build jobs."
)
@click.option("--model", default=None, help="Compare two versions of this model.")
@click.option("--versions", nargs=2, default=None, help="The two versions (number, label or latest).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def diff_cmd(server: str | None, token: str | None, job_ids: tuple[int, int] | None, model: str | None,
             versions: tuple[str, str] | None, as_json: bool) -> None:  # fmt: skip
    """Compare two engines (--jobs A B) or two versions of a model (--model M --versions A B) on the farm."""
    if bool(job_ids) == bool(model):
        raise click.UsageError("pass --jobs A B, or --model NAME --versions A B")
    client = FarmClient(*_client_settings(server, token))
    try:
        if job_ids:
            data = client.compare_jobs(*job_ids)
        else:
            if not versions:
                raise click.UsageError("--model needs --versions A B")
            data = client.compare_versions(model or "", *versions)
    except FarmApiError as exc:
        _fail(_api_error_text(exc))
    except FarmClientError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console = Console()
    if job_ids:
        table = Table(title=f"job {job_ids[0]} (a) vs job {job_ids[1]} (b)", title_justify="left")
        for column in ("", "a", "b"):
            table.add_column(column)
        a, b = data["a"], data["b"]
        for label, getter in (
            ("model", lambda s: f"{s['model']} {s['version']['label']}"),
            ("profile", lambda s: s["profile"]),
            ("precision", lambda s: str(s["precision"])),
            ("batch", lambda s: str(s["batch_size"])),
            ("median ms", lambda s: _num((s["latency"] or {}).get("median_ms"))),
            ("p99 ms", lambda s: _num((s["latency"] or {}).get("p99_ms"))),
            ("verdict", lambda s: str(s["verdict"])),
        ):
            table.add_row(label, getter(a), getter(b))
        console.print(table)
        console.print(f"median b/a: {_num(data['median_ratio'])}, p99 b/a: {_num(data['p99_ratio'])}, "
                      f"cosine b−a: {_num(data['cosine_delta'], 6)}", highlight=False)  # fmt: skip
    else:
        table = Table(
            title=f"{data['model']}: {data['a']['label']} (a) vs {data['b']['label']} (b)",
            title_justify="left",
        )
        for column in (
            "profile",
            "precision",
            "batch",
            "a median ms",
            "b median ms",
            "b/a",
            "a cosine",
            "b cosine",
        ):
            table.add_column(column)
        for row in data["rows"]:
            table.add_row(row["profile"], str(row["precision"]), str(row["batch_size"]), _num(row["a_median_ms"]),
                          _num(row["b_median_ms"]), _num(row["median_ratio"]), _num(row["a_worst_cosine"], 6),
                          _num(row["b_worst_cosine"], 6))  # fmt: skip
        console.print(table)


@click.command()
@click.argument("submission_id", type=int, required=False)
@server_options
@click.option("--engine", "engine_ids", multiple=True, type=int, help="Download this engine id (repeatable).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to download into.")  # fmt: skip
def download_cmd(submission_id: int | None, server: str | None, token: str | None, engine_ids: tuple[int, ...],
                 directory: Path) -> None:  # fmt: skip
    """Download the engines of a submission (or --engine IDs), resuming partial files; verify each sha256."""
    if submission_id is None and not engine_ids:
        raise click.UsageError("name a SUBMISSION_ID or --engine ID")
    client = FarmClient(*_client_settings(server, token))
    try:
        targets: list[tuple[int, str, Path]] = []
        if submission_id is not None:
            results = client.results(submission_id)
            for row in results["rows"]:
                if row["engine"]:
                    name = (
                        f"{results['model']}-{row['profile']}-{row['precision']}-b{row['batch_size']}.engine"
                    )
                    targets.append((row["engine"]["id"], row["engine"]["sha256"], directory / name))
        for engine_id in engine_ids:
            engine = client.engine(engine_id)
            name = f"engine-{engine_id}-{engine['profile']}-{engine['precision']}.engine"
            targets.append((engine_id, engine["sha256"], directory / name))
        if not targets:
            _fail("no engines to download (no job has finished building yet?)")
        for engine_id, sha256, target in targets:
            client.download_engine(engine_id, target, expected_sha256=sha256)
            click.echo(f"{target}  sha256 {sha256} verified")
    except FarmApiError as exc:
        _fail(_api_error_text(exc))
    except FarmClientError as exc:
        _fail(str(exc))


__all__ = ["diff_cmd", "download_cmd", "results_cmd", "submit_cmd"]
