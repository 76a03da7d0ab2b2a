"""The compiler's commands, modelled on trtexec and Polygraphy: build, run, bench, inspect, compare.

Each is registered lazily by ``farm/cli.py``'s COMMANDS table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.compiler.warmup import DEFAULT_MODELS as DEFAULT_WARMUP_MODELS
from farm.compiler.warmup import DEFAULT_PRECISIONS as DEFAULT_WARMUP_PRECISIONS


def _console(*, stderr: bool) -> Console:
    """A rich console; when not writing to a terminal (pipes, CI logs) tables get 160 columns
    instead of 80 so they are not truncated."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.width = 160
    return console


console = _console(stderr=True)
out = _console(stderr=False)


# ---------------------------------------------------------------------------- parsing helpers
def parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """``("x:1x3x224x224", "a:1x8,b:1x8")`` -> ``{"x": [1, 3, 224, 224], "a": [1, 8], "b": [1, 8]}``."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, dims = item.rpartition(":")
            try:
                if not sep or not name:
                    raise ValueError
                shapes[name] = [int(d) for d in dims.lower().split("x")]
            except ValueError:
                raise click.BadParameter(f"{item!r}: expected NAME:DxDxD, e.g. input:1x3x224x224") from None
    return shapes


def parse_batch_range(value: str | None) -> tuple[int, int, int] | None:
    """``"1:8:32"`` -> (min, opt, max); ``"1:32"`` -> (1, 1, 32); ``"8"`` -> (8, 8, 8)."""
    if value is None:
        return None
    try:
        parts = [int(p) for p in value.split(":")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected MIN:OPT:MAX, e.g. 1:8:32") from None
    if len(parts) == 1:
        parts = parts * 3
    elif len(parts) == 2:
        parts = [parts[0], parts[0], parts[1]]
    if len(parts) != 3 or not 1 <= parts[0] <= parts[1] <= parts[2]:
        raise click.BadParameter(f"{value!r}: expected 1 <= MIN <= OPT <= MAX")
    return parts[0], parts[1], parts[2]


def _load_engine(path: Path, allow_device_mismatch: bool) -> Any:
    from farm.compiler.engine import DeviceMismatchError, Engine, EngineFormatError

    try:
        return Engine.load(path, allow_device_mismatch=allow_device_mismatch)
    except (EngineFormatError, DeviceMismatchError) as exc:
        raise click.ClickException(str(exc)) from exc


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read inputs {path}: {exc}") from exc


def _engine_feeds(
    engine: Any, inputs: Path | None, batch: int | None, seed: int = 0
) -> dict[str, np.ndarray]:
    if inputs is not None:
        return _load_npz(inputs)
    from farm.compiler.builder import random_feeds

    try:
        return random_feeds(engine, batch=batch, seed=seed)
    except ValueError as exc:
        raise click.ClickException(f"--{exc}") from exc


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _memory_table(summary: dict[str, Any]) -> Table:
    table = Table(title="Memory plan")
    table.add_column("arena")
    table.add_column("naive sum")
    table.add_column("lower bound")
    table.add_column("arena / bound")
    table.add_column("views / in place / elided concats")
    table.add_row(
        _bytes(summary["arena_bytes"]),
        _bytes(summary["naive_bytes"]),
        _bytes(summary["lower_bound_bytes"]),
        f"{summary['arena_over_lower_bound']:.3f}",
        f"{summary['zero_copy_views']} / {summary['inplace_nodes']} / {summary['elided_concats']}",
    )
    return table


# ---------------------------------------------------------------------------- build


def _calibrator_spec(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check a ``--calibrator`` value (NAME[:OPTION,...]) now, with the calibration module's message."""
    from farm.compiler.precision.calibration import CalibrationError, CalibratorSpec

    try:
        return str(CalibratorSpec.parse(value))
    except CalibrationError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("build")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--profile", default="cpu", show_default=True, help="Hardware profile to build for.")
@click.option("--shapes", multiple=True, help="Input shapes, NAME:1x3x224x224 (repeat or comma-separate).")
@click.option("--batch-range", help="MIN:OPT:MAX batch for a symbolic batch dim (tuned at OPT).")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="JSON timing cache.")
@click.option("--tuning-level", type=click.IntRange(0, 3), default=1, show_default=True,
              help="0 = heuristic tactic choice (no timing); 1-3 = more timed runs.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Engine file to write.")  # fmt: skip
@click.option("--cache-state", type=click.Choice(["auto", "cold", "warm"]), default="auto", show_default=True,
              help="Time tactics with their weights out of the CPU cache (cold) or in it (warm); auto: "
                   "cold when the model's weights exceed the last-level cache.")  # fmt: skip
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8", "best"]), default="fp32",
              show_default=True, help="Allowed precision (the tuner picks the fastest allowed per layer).")  # fmt: skip
@click.option("--strict", is_flag=True, help="Obey --precision exactly wherever a tactic exists.")
@click.option(
    "--layer-precision", multiple=True, help="NAME=PREC, pin layers (glob) to a precision; repeatable."
)
@click.option("--calib", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="INT8 calibration samples (.npz, one array per input, samples on axis 0).")  # fmt: skip
@click.option("--calibrator", default="entropy", show_default=True, callback=_calibrator_spec,
              help="INT8 calibration: minmax|percentile|entropy|mse, optionally with :symmetric "
                   "(TensorRT's int8 scheme instead of asymmetric uint8), :no-bias-correction and/or :gptq "
                   "(error-compensating weight rounding), comma-separated (e.g. entropy:symmetric,no-bias-correction).")  # fmt: skip
@click.option("--calibration-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration cache file (read when it matches, else written).")  # fmt: skip
@click.option(
    "--calib-samples", type=click.IntRange(min=1), help="Use at most this many calibration samples."
)
@click.option("--accuracy-budget", help='e.g. "cosine>=0.999", "rel_l2<=0.01", "top1>=0.99" (needs --val).')
@click.option("--val", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Validation samples (.npz) for --accuracy-budget.")  # fmt: skip
@click.option("--disable-tactic", multiple=True, metavar="GLOB",
              help="Never choose tactics whose name matches (e.g. 'cpu.conv.winograd*'); repeatable.")  # fmt: skip
@click.option("--disable-pass", multiple=True, metavar="NAME",
              help="Skip an optimization pass (as the report names it); repeatable.")  # fmt: skip
@click.option("--in-engine-tuning/--no-in-engine-tuning", default=True, show_default=True,
              help="Settle close calls between a layer's tactics by timing them inside the whole engine.")  # fmt: skip
def build_cmd(
    model: Path,
    profile: str,
    shapes: tuple[str, ...],
    batch_range: str | None,
    timing_cache: Path | None,
    tuning_level: int,
    output: Path,
    cache_state: str = "auto",
    precision: str = "fp32",
    strict: bool = False,
    layer_precision: tuple[str, ...] = (),
    calib: Path | None = None,
    calibrator: str = "entropy",
    calibration_cache: Path | None = None,
    calib_samples: int | None = None,
    accuracy_budget: str | None = None,
    val: Path | None = None,
    disable_tactic: tuple[str, ...] = (),
    disable_pass: tuple[str, ...] = (),
    in_engine_tuning: bool = True,
) -> None:
    """Compile MODEL (ONNX) into an optimized engine for PROFILE."""
    from farm.compiler.builder import BuilderConfig, BuildError, build

    config = BuilderConfig(
        tuning_level=tuning_level,
        timing_cache=timing_cache,
        cold_timing={"auto": None, "cold": True, "warm": False}[cache_state],
        batch_range=parse_batch_range(batch_range),
        input_shapes=parse_shapes(shapes),
        precision=precision,
        strict=strict,
        layer_precision=list(layer_precision),
        calibration=calib,
        calibrator=calibrator,
        calibration_cache=calibration_cache,
        calibration_limit=calib_samples,
        accuracy_budget=accuracy_budget,
        validation=val,
        disabled_tactics=list(disable_tactic),
        disabled_passes=list(disable_pass),
        in_engine_tuning=in_engine_tuning,
    )
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(stage: str, done: int, total: int, detail: str) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=max(total, 1), detail="")
            progress.update(tasks[stage], completed=done, total=max(total, 1), detail=detail[:40])

        try:
            engine = build(model, profile, config, progress=on_progress)
        except (BuildError, ValueError, RuntimeError) as exc:
            raise click.ClickException(f"build failed: {exc}") from exc
    engine.save(output)
    _print_build_report(engine.report)
    from farm.compiler.precision.report import print_precision_report

    print_precision_report(console, engine.report)
    console.print(f"[green]engine written to {output}[/green] ({output.stat().st_size} bytes)")


def _print_build_report(report: dict[str, Any]) -> None:
    passes = report.get("passes")
    if passes:
        for line in passes.get("lines", []):
            console.print(f"  {line}")
    by_tactic: dict[str, list[float]] = {}
    for node in report["nodes"]:
        by_tactic.setdefault(node["tactic"], []).append(node["timings_ms"].get(node["tactic"]) or 0.0)
    table = Table(title="Tactics chosen")
    for col in ("tactic", "nodes", "tuned time (ms)"):
        table.add_column(col)
    for tactic, times in sorted(by_tactic.items(), key=lambda kv: -sum(kv[1])):
        table.add_row(tactic, str(len(times)), f"{sum(times):.3f}")
    console.print(table)
    if report["rejected"]:
        rejected = Table(title="Rejected tactics")
        for col in ("node", "op", "tactic", "reason"):
            rejected.add_column(col)
        for r in report["rejected"]:
            rejected.add_row(r["node"], r["op_type"], r["tactic"], r["reason"])
        console.print(rejected)
    console.print(_memory_table(report["memory"]))
    cache = report["timing_cache"]
    t = report["timings"]
    console.print(
        f"timing cache: {cache['hits']} hits, {cache['misses']} misses; build {t['total_s']:.2f} s "
        f"(optimize {t['optimize_s']:.2f}, tune {t['tune_s']:.2f}, plan {t['plan_s']:.2f})"
    )
    state = report.get("cache_state")
    if state and state["state"] == "cold":
        console.print(
            f"tactics timed cold: weights {state['constants_bytes'] / 2**20:.1f} MiB, last-level cache "
            f"{state['last_level_cache_bytes'] / 2**20:.1f} MiB"
        )
    in_engine = report.get("in_engine") or {}
    if in_engine.get("contests"):
        whole = in_engine.get("whole_ms") or {}
        line = (
            f"in-engine tuning ({in_engine['source']}): {len(in_engine['contests'])} close calls, "
            f"{len(in_engine['changed'])} layers changed"
        )
        if whole:
            line += f"; whole engine {whole['tuned']:.3f} -> {whole['in_engine']:.3f} ms"
        console.print(line)
        for node, (old, new) in in_engine["changed"].items():
            times = in_engine.get("layer_ms", {}).get(node, {})
            shown = (
                f" ({times[old]:.3f} -> {times[new]:.3f} ms in the engine)"
                if old in times and new in times
                else ""
            )
            console.print(f"  {node}: {old} -> {new}{shown}")
    threads = report.get("threads")
    if threads:
        timed = ", ".join(f"{k}: {v:.3f} ms" for k, v in threads.get("timings_ms", {}).items())
        console.print(
            f"threads: BLAS {threads['blas'] or 1}, numba {threads['numba'] or 'all'} ({threads['source']})"
            + (f"; whole-schedule medians {timed}" if timed else "")
        )


# ---------------------------------------------------------------------------- run
@click.command("run")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help=".npz with one array per engine input.")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=".npz to write the outputs to.")  # fmt: skip
@click.option("--allow-device-mismatch", is_flag=True, help="Run an engine built for another device.")
def run_cmd(engine_path: Path, inputs: Path, output: Path, allow_device_mismatch: bool) -> None:
    """Run ENGINE on inputs from an .npz file and write the outputs to an .npz file."""
    from farm.compiler.engine import FeedError

    engine = _load_engine(engine_path, allow_device_mismatch)
    try:
        results = engine.run(_load_npz(inputs))
    except FeedError as exc:
        raise click.ClickException(str(exc)) from exc
    np.savez(output, **results)
    table = Table(title=f"Outputs -> {output}")
    for col in ("name", "dtype", "shape", "min", "max", "mean"):
        table.add_column(col)
    for name, value in results.items():
        numeric = value.dtype.kind in "fiub" and value.size
        stats = (f"{value.min():.4g}", f"{value.max():.4g}", f"{value.mean():.4g}") if numeric else ("-",) * 3
        table.add_row(name, str(value.dtype), str(list(value.shape)), *stats)
    out.print(table)


# ---------------------------------------------------------------------------- bench
@click.command("bench")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), help="Batch size (default: the engine's opt batch).")
@click.option("--warmup-ms", type=float, default=200.0, show_default=True, help="Warm-up time.")
@click.option("--duration-s", type=float, default=3.0, show_default=True, help="Minimum timed duration.")
@click.option("--iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Minimum timed runs.")  # fmt: skip
@click.option("--profile-layers", is_flag=True, help="Also report per-layer time.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--allow-device-mismatch", is_flag=True, help="Run an engine built for another device.")
@click.option("--state", help="Stateful model: time it call after call, each call fed the state the previous one "
              "returned (no copies). INPUT=OUTPUT pairs (h0=h,c0=c) or 'auto'.")  # fmt: skip
def bench_cmd(
    engine_path: Path,
    batch: int | None,
    warmup_ms: float,
    duration_s: float,
    iterations: int,
    profile_layers: bool,
    as_json: bool,
    allow_device_mismatch: bool,
    state: str | None,
) -> None:
    """Measure ENGINE's latency and throughput on random inputs."""
    from farm.compiler.engine.benchmark import layer_profile, measure
    from farm.compiler.engine.fingerprint import device_fingerprint

    engine = _load_engine(engine_path, allow_device_mismatch)
    feeds = _engine_feeds(engine, None, batch)
    actual_batch = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else 1
    context = engine.create_context()
    run: Callable[[], Any] = lambda: context.run(feeds)  # noqa: E731
    if state:  # streaming: the state outputs of one call are the state inputs of the next
        from farm.compiler.engine.streaming import StateError, streaming_runner

        try:
            run, context = streaming_runner(engine, feeds, state)
        except StateError as exc:
            raise click.BadParameter(str(exc), param_hint="--state") from None
    stats = measure(run, batch=actual_batch, warmup_ms=warmup_ms, duration_s=duration_s,
                    iterations=iterations)  # fmt: skip
    layers = layer_profile(context, feeds, runs=max(3, min(iterations, 20))) if profile_layers else None
    if as_json:
        payload: dict[str, Any] = {"engine": str(engine_path), "latency": stats.to_json(with_samples=True),
                   "host": device_fingerprint(engine.fingerprint.get("backend", "cpu"))}  # fmt: skip
        if layers is not None:
            payload["layers"] = layers
        click.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{engine_path.name}: batch {actual_batch}, {len(stats.samples_ms)} runs")
    for col in ("min", "mean", "median", "p90", "p95", "p99", "max", "CV", "throughput"):
        table.add_column(col, justify="right")
    table.add_row(
        *(_ms(getattr(stats, f"{k}_ms")) for k in ("min", "mean", "median", "p90", "p95", "p99", "max")),
        f"{stats.cv:.1%}",
        f"{stats.throughput_per_s:.1f}/s",
    )
    out.print(table)
    out.print("latencies in ms")
    if layers is not None:
        lt = Table(title="Per-layer time (profiled runs)")
        for col in ("layer", "op", "tactic", "mean ms", "median ms", "share"):
            lt.add_column(col, justify="right" if "ms" in col or col == "share" else "left")
        for row in layers:
            lt.add_row(row["name"], row["op_type"], row["tactic"], f"{row['mean_ms']:.3f}",
                       f"{row['median_ms']:.3f}", f"{row['share']:.1%}")  # fmt: skip
        out.print(lt)


# ---------------------------------------------------------------------------- inspect
@click.command("inspect")
@click.argument("engine_path", metavar="ENGINE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def inspect_cmd(engine_path: Path) -> None:
    """Show ENGINE's bindings, layers, tactics, precisions and memory plan (any device)."""
    from farm.compiler.engine import EngineFormatError, read_manifest

    try:
        manifest = read_manifest(engine_path.read_bytes())
    except EngineFormatError as exc:
        raise click.ClickException(str(exc)) from exc
    fp = manifest["fingerprint"]
    out.print(
        f"[bold]{engine_path.name}[/bold]: format {manifest['format_version']}, compiler "
        f"{manifest['compiler_version']}, profile {manifest['profile']}, precision {manifest['precision']}"
    )
    out.print(f"built on: {fp.get('cpu_model')} ({fp.get('cores')} cores, {' '.join(fp.get('isa', []))}), "
              f"numpy {fp.get('numpy')}, numba {fp.get('numba')} [{fp.get('threading_layer')}], {fp.get('blas')}")  # fmt: skip
    bindings = Table(title="Bindings")
    for col in ("io", "name", "dtype", "shape", "min", "opt", "max"):
        bindings.add_column(col)
    for io in ("inputs", "outputs"):
        for b in manifest[io]:
            bindings.add_row(io[:-1], b["name"], b["dtype"], str(b["shape"]), str(b["min_shape"]),
                             str(b["opt_shape"]), str(b["max_shape"]))  # fmt: skip
    out.print(bindings)
    nodes = {n["name"]: n for n in manifest["graph"]["nodes"]}
    values = {v["name"]: v for v in manifest["graph"]["values"]}
    plan = manifest["memory_plan"]
    layers = Table(title=f"Layers ({len(manifest['schedule'])})")
    for col in ("#", "name", "op", "tactic", "precision", "output shape", "memory", "tuned ms"):
        layers.add_column(col)
    report = manifest["build_report"]
    for i, step in enumerate(manifest["schedule"]):
        node = nodes[step["node"]]
        first_out = node["outputs"][0] if node["outputs"] else ""
        place = plan["values"].get(first_out, {})
        if node["name"] in plan["view_nodes"]:
            memory = "view"
        elif node["name"] in plan["elided_concats"]:
            memory = "elided concat"
        elif place.get("kind") == "arena":
            buf = plan["buffers"][place["buffer"]]
            memory = f"arena @{buf['offset']}" + (
                " (in place)" if node["name"] in plan["inplace_nodes"] else ""
            )
        else:
            memory = place.get("kind", "-")
        layers.add_row(str(i), node["name"], node["op_type"], step["tactic"], node.get("precision") or manifest["precision"],
                       str(values.get(first_out, {}).get("shape")), memory, _ms(step["timings_ms"].get(step["tactic"])))  # fmt: skip
    out.print(layers)
    from farm.compiler.precision.report import print_precision_report

    print_precision_report(out, report)  # each layer's precision and why
    out.print(_memory_table(report["memory"]))
    if report.get("passes"):
        out.print("passes: " + "; ".join(report["passes"].get("lines", [])))
    cache = report["timing_cache"]
    out.print(f"tuning level {report['tuning_level']}; timing cache {cache['hits']} hits / {cache['misses']} misses; "
              f"{len(report['rejected'])} tactics rejected; build {report['timings']['total_s']:.2f} s")  # fmt: skip


# ---------------------------------------------------------------------------- compare
@click.command("compare")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("engine_path", metavar="ENGINE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npz inputs (default: random inputs at the engine's opt shapes).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON on stdout.")
@click.option("--allow-device-mismatch", is_flag=True, help="Run an engine built for another device.")
def compare_cmd(
    model: Path, engine_path: Path, inputs: Path | None, as_json: bool, allow_device_mismatch: bool
) -> None:
    """Compare ENGINE's outputs with ONNX Runtime's on MODEL (max abs, rel L2, cosine, SNR, top-k)."""
    from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs
    from farm.compiler.engine import FeedError

    engine = _load_engine(engine_path, allow_device_mismatch)
    feeds = _engine_feeds(engine, inputs, None)
    try:
        got = engine.run(feeds)
    except FeedError as exc:
        raise click.ClickException(str(exc)) from exc
    want = onnxruntime_outputs(model, feeds)
    metrics = compare_outputs(got, {k: v for k, v in want.items() if k in got})
    if as_json:
        click.echo(json.dumps({"model": str(model), "engine": str(engine_path),
                               "outputs": [m.to_json() for m in metrics]}, indent=2))  # fmt: skip
        return
    table = Table(title=f"{engine_path.name} vs ONNX Runtime on {model.name}")
    for col in ("output", "shape", "max abs", "rel L2", "cosine", "SNR dB", "top-1", "top-5"):
        table.add_column(col, justify="left" if col in ("output", "shape") else "right")
    for m in metrics:
        table.add_row(m.name, str(m.shape), f"{m.max_abs:.3g}", f"{m.rel_l2:.3g}", f"{m.cosine:.8f}",
                      "inf" if m.snr_db == float("inf") else f"{m.snr_db:.1f}",
                      "-" if m.top1 is None else f"{m.top1:.1%}", "-" if m.top5 is None else f"{m.top5:.1%}")  # fmt: skip
    out.print(table)


# ---------------------------------------------------------------------------- warmup
def _names(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command("warmup")
@click.option("--models", default=",".join(DEFAULT_WARMUP_MODELS), show_default=True, callback=_names,
              help="Comma-separated zoo models to build.")  # fmt: skip
@click.option("--precisions", default=",".join(DEFAULT_WARMUP_PRECISIONS), show_default=True, callback=_names,
              help="Comma-separated precisions to build each model in.")  # fmt: skip
@click.option("--profile", default="cpu", show_default=True, help="Hardware profile.")
def warmup_cmd(models: list[str], precisions: list[str], profile: str) -> None:
    """Compile the kernels a build needs, so the first real build does not wait for numba.

    Builds each zoo model once per precision at batch 1 and tuning level 1 and throws the
    engines away; numba keeps the compiled kernels in its on-disk cache. Run it once per host
    after installing or upgrading (a cold cache costs minutes on the first build).
    """
    from farm import zoo
    from farm.compiler.builder import PRECISIONS
    from farm.compiler.warmup import warm_up

    unknown = sorted(set(models) - set(zoo.MODELS))
    if unknown or not models:
        raise click.BadParameter(f"unknown zoo model(s) {unknown}; known: {', '.join(sorted(zoo.MODELS))}",
                                 param_hint="--models")  # fmt: skip
    bad = sorted(set(precisions) - set(PRECISIONS))
    if bad or not precisions:
        raise click.BadParameter(f"unknown precision(s) {bad}; known: {', '.join(PRECISIONS)}",
                                 param_hint="--precisions")  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_console(stderr=True), transient=True) as bar:
        task = bar.add_task("warm-up", total=len(models) * len(precisions))
        report = warm_up(
            models,
            precisions,
            profile=profile,
            on_step=lambda model, precision: bar.update(task, description=f"{model} {precision}"),
            on_done=lambda step: bar.advance(task),
        )
    table = Table(title=f"Kernel warm-up ({report.seconds:.1f} s)")
    for col in ("model", "precision", "seconds", "compiled", "from cache", "result"):
        table.add_column(col, justify="left" if col in ("model", "precision", "result") else "right")
    for step in report.steps:
        table.add_row(step.model, step.precision, f"{step.seconds:.1f}", str(step.compiled), str(step.loaded),
                      "ok" if step.error is None else step.error[:120])  # fmt: skip
    out.print(table)
    out.print(f"{report.compiled} kernel signatures compiled, {report.loaded} loaded from numba's cache")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} warm-up build(s) failed (see the table)")
