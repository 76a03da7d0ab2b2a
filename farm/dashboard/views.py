"""Dashboard pages: overview, model, history, compare, engine, job.

Views are thin: they read the query string (every filter lives there, so a URL can be shared),
ask :mod:`farm.dashboard.queries` for the data and render a template. Templates escape every value
(Jinja autoescape); chart data goes through ``tojson`` into ``<script type="application/json">``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, abort, jsonify, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from farm.api.health import MISSED_HEARTBEATS_BEFORE_LOST
from farm.app import current_services
from farm.dashboard import access, analysis, charts, queries
from farm.db import utcnow

dashboard_blueprint = Blueprint(
    "dashboard", __name__, template_folder="templates", static_folder="static", static_url_path="/static/farm"
)
access.install(dashboard_blueprint)

LOG_TAIL_LINES = 400
VERDICT_OUTCOMES = ("improved", "unchanged", "regressed", "failed", "no_baseline")


def _int_arg(name: str, default: int | None = None, *, minimum: int = 0, maximum: int = 10**9) -> int | None:
    value = request.args.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        abort(400, f"{name} must be an integer")
    if not minimum <= number <= maximum:
        abort(400, f"{name} must be between {minimum} and {maximum}")
    return number


def _choice_arg(name: str, choices: dict[str, Any] | tuple[str, ...], default: str) -> str:
    value = request.args.get(name, default)
    return value if value in choices else default


def _job_url(job_id: int) -> str:
    return url_for("dashboard.job_page", job_id=job_id)


def _with_args(**changes: Any) -> str:
    """This page's URL with some query arguments changed (``None`` removes one)."""
    args: dict[str, Any] = {key: value for key, value in request.args.items() if key not in changes}
    args.update({key: value for key, value in changes.items() if value is not None})
    assert request.endpoint is not None
    return url_for(request.endpoint, **(request.view_args or {}), **args)


@dashboard_blueprint.errorhandler(400)
@dashboard_blueprint.errorhandler(404)
def _page_error(error: HTTPException) -> Any:
    """A missing model/job/engine or a bad query argument, as a page of the dashboard."""
    code = error.code or 500
    return render_template(
        "dashboard/error.html", code=code, name=error.name, message=error.description
    ), code


dashboard_blueprint.add_app_template_global(_with_args, "with_args")
dashboard_blueprint.add_app_template_global(charts.precision_color, "precision_color")


@dashboard_blueprint.get("/")
def overview() -> Any:
    """Recent submissions with verdicts, queues and workers per profile, failures of the last day."""
    services = current_services()
    alive_after = utcnow() - timedelta(
        seconds=services.settings.heartbeat_seconds * MISSED_HEARTBEATS_BEFORE_LOST
    )
    model = request.args.get("model") or None
    profile = request.args.get("profile") or None
    with services.db.session() as session:
        data = queries.overview(
            session, worker_alive_after=alive_after, model=model, profile=profile, before=_int_arg("before")
        )
    return render_template("dashboard/overview.html", data=data, model=model, profile=profile)


@dashboard_blueprint.get("/models/<path:name>")
def model_page(name: str) -> Any:
    """The versions × profiles × precisions matrix, best precision per profile, speed vs accuracy."""
    metric = _choice_arg("acc", queries.ACCURACY_METRICS, "cosine")
    column, metric_label, higher_is_better = queries.ACCURACY_METRICS[metric]
    with current_services().db.session() as session:
        model = queries.find_model(session, name)
        if model is None:
            abort(404, f"no model named {name!r}")
        matrix = queries.model_matrix(
            session,
            model,
            batch=_int_arg("batch", minimum=1),
            profile=request.args.get("profile") or None,
            precision=request.args.get("precision") or None,
            before_number=_int_arg("before", minimum=1),
            versions=_int_arg("versions", 12, minimum=1, maximum=100) or 12,
        )
        choices = queries.history_choices(session, model)
    # the speed/accuracy frontier of the chosen version (default: the newest with results)
    chosen = _int_arg("version", minimum=1)
    with_results = [row for row in matrix.rows if any(c.succeeded for c in row.cells.values())]
    row = next((r for r in matrix.rows if r.number == chosen), with_results[0] if with_results else None)
    frontier_charts = []
    if row is not None:
        for profile in matrix.profiles:
            cells = sorted(
                (
                    c
                    for (p, _), c in row.cells.items()
                    if p == profile and c.succeeded and c.median_ms is not None
                    and c.accuracy.get(metric) is not None
                ),
                key=lambda c: queries.precision_sort_key(c.precision),
            )  # fmt: skip
            if not cells:
                continue
            front = queries.pareto_front(
                [(c.median_ms or 0.0, c.accuracy[metric] or 0.0) for c in cells],
                higher_is_better=higher_is_better,
            )
            frontier_charts.append(
                {
                    "profile": profile,
                    "best": row.best.get(profile),
                    "option": charts.speed_accuracy(
                        cells,
                        metric=metric,
                        metric_label=metric_label,
                        higher_is_better=higher_is_better,
                        front=front,
                        job_url=_job_url,
                    ),  # fmt: skip
                    "series": len(cells) + (1 if front else 0),
                }
            )
    return render_template(
        "dashboard/model.html",
        model=model,
        matrix=matrix,
        choices=choices,
        metric=metric,
        metric_label=metric_label,
        metrics=queries.ACCURACY_METRICS,
        chart_row=row,
        frontier_charts=frontier_charts,
    )


@dashboard_blueprint.get("/history")
def history_page() -> Any:
    """One metric of one model × profile × precision × batch across versions."""
    name = request.args.get("model", "")
    metrics = {
        key: label for key, (_, label, _) in {**queries.LATENCY_METRICS, **queries.ACCURACY_METRICS}.items()
    }
    metric = _choice_arg("metric", metrics, "median_ms")
    with current_services().db.session() as session:
        model = queries.find_model(session, name)
        if model is None:
            abort(404, f"no model named {name!r}")
        choices = queries.history_choices(session, model)
        profile = request.args.get("profile") or (choices["profiles"][0] if choices["profiles"] else "")
        precision = request.args.get("precision") or (
            choices["precisions"][0] if choices["precisions"] else ""
        )
        batch = _int_arg("batch", choices["batch_sizes"][0] if choices["batch_sizes"] else 1, minimum=1)
        assert batch is not None
        points = queries.history(
            session, model, profile=profile, precision=precision, batch=batch, metric=metric
        )
    option = charts.history_chart(points, metric_label=metrics[metric], job_url=_job_url) if points else None
    return render_template(
        "dashboard/history.html",
        model=model,
        choices=choices,
        profile=profile,
        precision=precision,
        batch=batch,
        metric=metric,
        metrics=metrics,
        points=points,
        option=option,
        latency=metric in queries.LATENCY_METRICS,
    )


@dashboard_blueprint.get("/compare")
def compare_page() -> Any:
    """Two engines side by side (``?a=JOB&b=JOB``), or two versions of a model
    (``?model=NAME&va=N&vb=M``, optionally ``&profile=&precision=&batch=`` to pick the engines)."""
    with current_services().db.session() as session:
        versions_table = None
        name = request.args.get("model")
        a_id, b_id = _int_arg("a", minimum=1), _int_arg("b", minimum=1)
        model = None
        if name:
            model = queries.find_model(session, name)
            if model is None:
                abort(404, f"no model named {name!r}")
            va, vb = _int_arg("va", minimum=1), _int_arg("vb", minimum=1)
            if va is None or vb is None:
                abort(400, "comparing versions needs va and vb (version numbers)")
            summaries = queries.version_jobs(session, model, [va, vb])
            versions_table = _versions_table(summaries, va, vb)
            pick = _pick_cell(versions_table, request.args)
            if pick is not None and a_id is None and b_id is None:
                a_id, b_id = pick["a"].id, pick["b"].id
        if a_id is None or b_id is None:
            if versions_table is None:
                abort(400, "compare needs ?a=JOB&b=JOB or ?model=NAME&va=N&vb=M")
            return render_template("dashboard/compare.html", model=model, versions_table=versions_table,
                                   a=None, b=None)  # fmt: skip
        a = queries.job_detail(session, a_id)
        b = queries.job_detail(session, b_id)
        if a is None or b is None:
            abort(404, f"no job {a_id if a is None else b_id}")
        context = _compare_context(a, b)
    return render_template("dashboard/compare.html", model=model, versions_table=versions_table, **context)


def _versions_table(summaries: list[queries.JobSummary], va: int, vb: int) -> dict[str, Any]:
    cells: dict[tuple[str, str, int], dict[str, queries.JobSummary]] = {}
    for summary in summaries:  # by job id: the newest job of a cell wins
        if not summary.succeeded:
            continue
        key = (summary.profile, summary.precision or "", summary.batch_size or 0)
        side = "a" if summary.version_number == va else "b"
        cells.setdefault(key, {})[side] = summary
    rows = []
    for (profile, precision, batch), pair in sorted(
        cells.items(), key=lambda kv: (kv[0][0], queries.precision_sort_key(kv[0][1]), kv[0][2])
    ):
        a, b = pair.get("a"), pair.get("b")
        rows.append(
            {
                "profile": profile, "precision": precision, "batch": batch, "a": a, "b": b,
                "latency_change": analysis.percent_change(a.median_ms if a else None, b.median_ms if b else None),
            }
        )  # fmt: skip
    return {"va": va, "vb": vb, "rows": rows}


def _pick_cell(table: dict[str, Any], args: Any) -> dict[str, Any] | None:
    complete = [row for row in table["rows"] if row["a"] and row["b"]]
    for row in complete:
        if (
            args.get("profile", row["profile"]) == row["profile"]
            and args.get("precision", row["precision"]) == row["precision"]
            and str(args.get("batch", row["batch"])) == str(row["batch"])
        ):
            return row
    return complete[0] if complete else None


def _compare_context(a: queries.JobDetail, b: queries.JobDetail) -> dict[str, Any]:
    label_a, label_b = f"A: {_short(a)}", f"B: {_short(b)}"
    stats = [
        (label_a, analysis.box_stats(a.candidate.samples_ms if a.candidate else [])),
        (label_b, analysis.box_stats(b.candidate.samples_ms if b.candidate else [])),
    ]
    layers_a = analysis.engine_layers(a.engine.build_report if a.engine else None)
    layers_b = analysis.engine_layers(b.engine.build_report if b.engine else None)
    layer_option, layers_left_out = charts.layer_times([(label_a, layers_a), (label_b, layers_b)])
    changes = analysis.compare_layers(layers_a, layers_b)
    outputs = sorted({r.output_name for r in a.accuracy} | {r.output_name for r in b.accuracy})
    accuracy_rows = [
        (
            output,
            next((r for r in a.accuracy if r.output_name == output), None),
            next((r for r in b.accuracy if r.output_name == output), None),
        )
        for output in outputs
    ]
    return {
        "a": a,
        "b": b,
        "label_a": label_a,
        "label_b": label_b,
        "box_option": charts.latency_boxes(stats),
        "box_series": sum(1 for _ in stats) + (1 if any(s and s.outliers for _, s in stats) else 0),
        "box_stats": stats,
        "layer_option": layer_option if layers_a or layers_b else None,
        "layers_left_out": layers_left_out,
        "changed_layers": [c for c in changes if c.tactic_changed or c.precision_changed],
        "layer_count": len(changes),
        "accuracy_rows": accuracy_rows,
        "percent_change": analysis.percent_change,
    }


def _short(detail: queries.JobDetail) -> str:
    return f"{detail.version.display_label} {detail.job.profile} {detail.job.precision} #{detail.job.id}"


@dashboard_blueprint.get("/engines/<int:engine_id>")
def engine_page(engine_id: int) -> Any:
    """An engine's build report, layers, memory plan, host fingerprint and download."""
    with current_services().db.session() as session:
        job_id = queries.engine_job_id(session, engine_id)
        detail = queries.job_detail(session, job_id, with_samples=False) if job_id is not None else None
        if detail is None or detail.engine is None:
            abort(404, f"no engine {engine_id}")
        engine = detail.engine
        layers = analysis.engine_layers(engine.build_report)
        option, left_out = charts.layer_times([("tuned time", layers)], limit=40)
    report = engine.build_report or {}
    return render_template(
        "dashboard/engine.html",
        detail=detail,
        engine=engine,
        report=report,
        passes=((report.get("passes") or {}).get("passes")) or [],
        pass_summary=report.get("passes") or {},
        layers=layers,
        layer_option=option if layers else None,
        layers_left_out=left_out,
        total_layer_ms=sum(layer.time_ms or 0.0 for layer in layers),
    )


@dashboard_blueprint.get("/engines/<int:engine_id>/download")
def engine_download(engine_id: int) -> Any:
    """The engine file, named after its model, precision and profile; ETag is its sha256."""
    services = current_services()
    with services.db.session() as session:
        job_id = queries.engine_job_id(session, engine_id)
        detail = queries.job_detail(session, job_id, with_samples=False) if job_id is not None else None
        if detail is None or detail.engine is None:
            abort(404, f"no engine {engine_id}")
        engine = detail.engine
        filename = (
            f"{detail.model.name}-{detail.version.display_label}-{engine.profile}-{engine.precision}.engine"
        )
    etag = engine.sha256
    if request.if_none_match.contains(etag):
        return Response(status=304, headers={"ETag": f'"{etag}"'})
    response = Response(
        services.store.open_chunks(engine.artifact_key),
        mimetype="application/octet-stream",
        headers={
            "Content-Length": str(engine.size_bytes),
            "ETag": f'"{etag}"',
            "X-Checksum-Sha256": etag,
        },
    )
    response.headers.set("Content-Disposition", "attachment", filename=filename)
    return response


@dashboard_blueprint.get("/jobs/<int:job_id>")
def job_page(job_id: int) -> Any:
    """A job's state, progress and log while it runs; its results once it finished."""
    with current_services().db.session() as session:
        detail = queries.job_detail(session, job_id)
        if detail is None:
            abort(404, f"no job {job_id}")
        stats = analysis.box_stats(detail.candidate.samples_ms if detail.candidate else [])
        baseline_stats = analysis.box_stats(
            detail.baseline_benchmark.samples_ms if detail.baseline_benchmark else []
        )
        box_option = None
        if stats is not None:
            named = [("this engine", stats)] + (
                [("baseline (interleaved)", baseline_stats)] if baseline_stats else []
            )
            box_option = charts.latency_boxes(named)
    final = detail.job.state.is_final
    facts = (detail.job.result or {}).get("facts") or detail.version.facts
    return render_template(
        "dashboard/job.html",
        detail=detail,
        job=detail.job,
        final=final,
        facts=facts,
        log_text=_log_tail(detail.job.log_artifact_key) if final else None,
        box_option=box_option,
        overall=detail.verdicts.get("overall"),
    )


@dashboard_blueprint.get("/jobs/<int:job_id>/live")
def job_live(job_id: int) -> Any:
    """The job's state, progress and the tail of its log, for the job page's polling."""
    with current_services().db.session() as session:
        detail = queries.job_detail(session, job_id, with_samples=False)
        if detail is None:
            abort(404, f"no job {job_id}")
        job = detail.job
        body = {
            "id": job.id,
            "state": job.state.value,
            "final": job.state.is_final,
            "attempts": job.attempts,
            "worker": job.worker_name,
            "progress": job.progress,
            "error": job.error,
            "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        }
        key = job.log_artifact_key
    body["log"] = _log_tail(key)
    return jsonify(body)


def _log_tail(key: str | None) -> str:
    if not key:
        return ""
    try:
        text = current_services().store.read_bytes(key).decode("utf-8", errors="replace")
    except Exception:  # a snapshot replaced between reading the key and the file: the next poll has it
        return ""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
