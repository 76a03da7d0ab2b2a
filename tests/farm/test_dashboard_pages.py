"""Dashboard pages against a farm whose results the real worker pipeline produced.

The sample farm (tests/dashboard_support.py) is built once per test session: two versions of the
demo MLP in fp32/fp16/int8, a small ResNet, a model full of hostile HTML, and a failed job.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dashboard_support import (
    HOSTILE,
    HOSTILE_BRANCH,
    HOSTILE_CI_URL,
    SampleFarm,
    make_app,
    shared_sample_farm,
)
from flask import Flask
from sqlalchemy import event, select

from farm.api.commands import UploadModelCommand, VersionMetadata
from farm.api.errors import ApiError
from farm.compiler import Engine as CompiledEngine
from farm.dashboard.analysis import box_stats
from farm.dashboard.queries import pareto_front
from farm.db import AccuracyResult, BenchmarkResult, Engine, Job, ModelVersion, Verdict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> SampleFarm:
    """The sample farm (built once per session, shared with the other dashboard test modules)."""
    return shared_sample_farm(lambda: tmp_path_factory.mktemp("dashboard-farm"))


@pytest.fixture
def empty_app(tmp_path: Path) -> Iterator[Flask]:
    """An app on a fresh, empty farm."""
    app = make_app(tmp_path)
    yield app
    app.extensions["farm"].db.dispose()


def chart_options(page: str) -> dict[str, dict]:
    """The ECharts options a page embeds, by chart element id."""
    options = {}
    for chart_id, payload in re.findall(
        r'<script type="application/json" id="([^"]+)-option">(.*?)</script>', page, re.S
    ):
        options[chart_id] = json.loads(payload)
    return options


def get(farm: SampleFarm, path: str) -> str:
    response = farm.client.get(path)
    assert response.status_code == 200, (path, response.status_code, response.get_data(as_text=True)[:500])
    return response.get_data(as_text=True)


def test_overview_lists_submissions_queues_workers_and_failures(farm: SampleFarm) -> None:
    page = get(farm, "/")
    failed_job = farm.jobs["failed"][0]
    assert "mlp" in page and "resnet" in page
    assert f'href="/jobs/{failed_job}"' in page  # the failure of the last day is listed with its job
    assert "unknown pass name" in page
    profiles = page[page.index('id="profiles"') : page.index('id="failures"')]
    assert ">cpu<" in profiles and 'class="chip state-succeeded">1<' in profiles  # one worker online
    assert "farm demo" not in page[: page.index('id="profiles"')]  # not the empty-farm hint
    # filtered by model: only that model's submissions
    filtered = get(farm, "/?model=resnet")
    rows = filtered[filtered.index('id="submissions"') : filtered.index('id="models"')]
    assert "/models/resnet" in rows and "/models/mlp" not in rows


def test_overview_paginates_with_a_shareable_cursor(farm: SampleFarm) -> None:
    with farm.services.db.session() as session:
        submissions = session.execute(select(Job.submission_id).distinct()).scalars().all()
    count = len([s for s in submissions if s is not None])
    newest = max(s for s in submissions if s is not None)
    page = get(farm, f"/?before={newest}")
    assert f'<td class="muted">{newest}</td>' not in page
    assert f'<td class="muted">{newest - 1}</td>' in page
    assert count >= 2


def test_model_matrix_marks_the_fastest_precision_within_budget(farm: SampleFarm) -> None:
    page = get(farm, "/models/mlp")
    with farm.services.db.session() as session:
        for version in session.execute(
            select(ModelVersion).join(ModelVersion.model).where(ModelVersion.number.in_([1, 2]))
        ).scalars():
            if version.model.name != "mlp":
                continue
            rows = session.execute(
                select(Job.precision, BenchmarkResult.median_ms, Job.id)
                .join(BenchmarkResult, BenchmarkResult.job_id == Job.id)
                .where(Job.model_version_id == version.id, BenchmarkResult.role == "candidate")
            ).all()
            passed = {
                job_id
                for job_id, ok in session.execute(select(AccuracyResult.job_id, AccuracyResult.passed)).all()
                if ok
            }
            eligible = [(median, precision) for precision, median, job_id in rows if job_id in passed]
            best = min(eligible)[1]
            row = page[page.index(f"<b>{version.display_label}</b>") :]
            row = row[: row.index("</tr>")]
            best_cells = re.findall(
                r'<td class="cell[^"]*best" data-profile="cpu" data-precision="(\w+)"', row
            )
            assert best_cells == [best]
            assert len(re.findall(r'data-precision="(\w+)"', row)) == 3
    # one speed/accuracy chart for profile cpu: a series per precision (+ the frontier line)
    options = chart_options(page)
    series = options["frontier-1"]["series"]
    assert sorted(s["name"] for s in series if s["type"] == "scatter") == ["fp16", "fp32", "int8"]


def test_model_page_filters_live_in_the_query_string(farm: SampleFarm) -> None:
    page = get(farm, "/models/mlp?precision=int8&acc=rel_l2")
    assert 'data-precision="int8"' in page and 'data-precision="fp32"' not in page
    assert "relative L2 error (worst output)" in page
    assert farm.client.get("/models/mlp?batch=abc").status_code == 400
    assert farm.client.get("/models/no-such-model").status_code == 404


def test_history_shows_versions_baseline_and_band(farm: SampleFarm) -> None:
    page = get(farm, "/history?model=mlp&profile=cpu&precision=fp32&batch=4&metric=median_ms")
    option = chart_options(page)["history-chart"]
    names = [s["name"] for s in option["series"]]
    assert names == ["noise band (95% CI)", "baseline", "value", "regressed", "improved"]
    v1_job, v2_job = farm.jobs["mlp v1"][0], farm.jobs["mlp v2"][0]
    value = next(s for s in option["series"] if s["name"] == "value")["data"]
    assert [point["url"] for point in value] == [f"/jobs/{v1_job}", f"/jobs/{v2_job}"]
    with farm.services.db.session() as session:
        medians = dict(
            session.execute(
                select(BenchmarkResult.role, BenchmarkResult.median_ms).where(
                    BenchmarkResult.job_id == v2_job
                )
            ).all()
        )
        latency = session.execute(
            select(Verdict).where(Verdict.job_id == v2_job, Verdict.kind == "latency")
        ).scalar_one()
        band = (latency.details["baseline_median_ms"] * latency.details["ci_low"],
                latency.details["baseline_median_ms"] * latency.details["ci_high"])  # fmt: skip
    assert value[1]["value"] == pytest.approx(medians["candidate"])
    baseline = next(s for s in option["series"] if s["name"] == "baseline")["data"]
    assert baseline == [None, pytest.approx(medians["baseline"])]  # measured interleaved in v2's job
    assert option["series"][0]["data"][0] == "-"  # v1 was not judged: no interval
    low, high = option["series"][0]["data"][1][:2]
    assert (low, high) == (pytest.approx(band[0]), pytest.approx(band[1]))
    markers = {s["name"]: len(s["data"]) for s in option["series"][3:]}
    expected = {"regressed": 0, "improved": 0} | ({latency.outcome: 1} if latency.outcome in markers else {})
    assert markers == expected
    # an accuracy metric has no latency band
    accuracy = chart_options(get(farm, "/history?model=mlp&profile=cpu&precision=int8&batch=4&metric=cosine"))
    assert all(v == "-" for v in accuracy["history-chart"]["series"][0]["data"])


def test_compare_versions_then_engines(farm: SampleFarm) -> None:
    page = get(farm, "/compare?model=mlp&va=1&vb=2")
    table = page[page.index('id="versions"') : page.index('id="side-a"')]
    assert table.count("compare engines") == 3  # fp32, fp16, int8 in both versions
    a_job, b_job = farm.jobs["mlp v1"][0], farm.jobs["mlp v2"][0]  # the first row: fp32
    assert f'href="/jobs/{a_job}"' in page and f'href="/jobs/{b_job}"' in page
    options = chart_options(page)
    boxes = [s for s in options["latency-box"]["series"] if s["type"] == "boxplot"]
    assert len(boxes) == 2
    with farm.services.db.session() as session:
        samples = session.execute(
            select(BenchmarkResult.samples_ms).where(
                BenchmarkResult.job_id == a_job, BenchmarkResult.role == "candidate"
            )
        ).scalar_one()
        reports = {
            job_id: report
            for job_id, report in session.execute(
                select(Engine.job_id, Engine.build_report).where(Engine.job_id.in_([a_job, b_job]))
            )
        }
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    assert boxes[0]["data"][0][1:4] == [pytest.approx(q1), pytest.approx(median), pytest.approx(q3)]
    bars = options["layer-bars"]
    assert len(bars["series"]) == 2
    nodes_a = {n["node"]: n["tactic"] for n in reports[a_job]["nodes"]}
    nodes_b = {n["node"]: n["tactic"] for n in reports[b_job]["nodes"]}
    changed = {n for n in nodes_a.keys() | nodes_b.keys() if nodes_a.get(n) != nodes_b.get(n)}
    listed = page[page.index('id="changed-layers"') :]
    listed = listed[: listed.index("</table>")]
    assert listed.count("<tr>") - 1 == len(changed) or (not changed and "same tactic" in listed)
    # the same engines by job id give the same percentiles
    direct = get(farm, f"/compare?a={a_job}&b={b_job}")
    assert chart_options(direct)["latency-box"]["series"][0]["data"] == boxes[0]["data"]


def test_engine_page_and_download(farm: SampleFarm) -> None:
    job_id = farm.jobs["resnet v1"][0]
    with farm.services.db.session() as session:
        engine = session.execute(select(Engine).where(Engine.job_id == job_id)).scalar_one()
        engine_id, sha256, size = engine.id, engine.sha256, engine.size_bytes
        report = engine.build_report
    page = get(farm, f"/engines/{engine_id}")
    assert sha256 in page and f"{size:,} bytes" in page
    for entry in report["passes"]["passes"]:
        assert f'<td class="mono">{entry["name"]}</td>' in page
    layer_table = page[page.index('id="layer-table"') :]
    assert layer_table.count('<td class="muted">') >= len(report["nodes"])
    for node in report["nodes"]:
        assert html.escape(node["tactic"], quote=False) in layer_table
    assert len(chart_options(page)["engine-layers"]["series"]) == 1
    response = farm.client.get(f"/engines/{engine_id}/download")
    assert response.status_code == 200
    data = response.get_data()
    assert hashlib.sha256(data).hexdigest() == sha256 and len(data) == size
    assert response.headers["ETag"] == f'"{sha256}"'
    assert "resnet-v1-cpu-fp32.engine" in response.headers["Content-Disposition"]
    assert (
        farm.client.get(
            f"/engines/{engine_id}/download", headers={"If-None-Match": f'"{sha256}"'}
        ).status_code
        == 304
    )
    engine_file = CompiledEngine.from_bytes(data)
    feeds = {
        b.name: np.random.default_rng(0).standard_normal([4, 3, 32, 32]).astype(np.float32)
        for b in engine_file.inputs
    }
    outputs = engine_file.run(feeds)
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_job_page_results_and_live_state(farm: SampleFarm) -> None:
    job_id = farm.jobs["mlp v2"][2]
    page = get(farm, f"/jobs/{job_id}")
    assert 'id="live"' not in page  # finished: results, not the live panel
    assert (
        "Compare with the baseline" in page and f"/compare?a={farm.jobs['mlp v1'][2]}&amp;b={job_id}" in page
    )
    assert "step benchmark" in page  # the job's log
    live = farm.client.get(f"/jobs/{job_id}/live").json
    assert live["state"] == "succeeded" and live["final"] is True
    assert "verdict" in live["log"] and live["progress"]["step"] == "done"
    failed = get(farm, f"/jobs/{farm.jobs['failed'][0]}")
    assert "unknown pass name" in failed


def test_queued_job_page_polls(farm: SampleFarm) -> None:
    from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest

    with farm.app.app_context():
        command = CreateSubmissionCommand(
            farm.services,
            SubmissionRequest(model="resnet", profiles=["cpu"], precisions=["fp16"], batch_sizes=[2]),
        )
        command.validate()
        job_id = command.run().job_ids[0]
    try:
        page = get(farm, f"/jobs/{job_id}")
        assert 'id="live"' in page and f'data-live-url="/jobs/{job_id}/live"' in page
        live = farm.client.get(f"/jobs/{job_id}/live").json
        assert live == live | {"state": "queued", "final": False, "log": ""}
    finally:
        with farm.services.db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            session.delete(job)


def test_user_text_is_escaped_everywhere(farm: SampleFarm) -> None:
    job_id = farm.jobs["hostile"][0]
    with farm.services.db.session() as session:
        engine_id = session.execute(select(Engine.id).where(Engine.job_id == job_id)).scalar_one()
    pages = [
        "/", "/models/hostile", f"/jobs/{job_id}", f"/engines/{engine_id}",
        f"/compare?a={job_id}&b={job_id}", "/history?model=hostile&metric=cosine",
    ]  # fmt: skip
    for path in pages:
        page = get(farm, path)
        for text in (HOSTILE, HOSTILE_BRANCH):
            assert text not in page, path
        assert 'href="javascript:' not in page, path
    job_page = get(farm, f"/jobs/{job_id}")
    assert html.escape(HOSTILE) in job_page and html.escape(HOSTILE_BRANCH) in job_page
    assert html.escape(HOSTILE_CI_URL) in job_page  # shown as text, not as a link
    engine_page = get(farm, f"/engines/{engine_id}")
    assert html.escape(HOSTILE) in engine_page  # the layer named <script>
    # JSON for the charts cannot close its <script> element
    assert "\\u003cscript\\u003e" in engine_page
    # the API refuses the name itself; nothing is stored
    with farm.app.app_context(), pytest.raises(ApiError) as refused:
        UploadModelCommand(
            farm.services,
            name=HOSTILE,
            stream=__import__("io").BytesIO(b""),
            filename="x.onnx",
            metadata=VersionMetadata(),
        ).validate()
    assert refused.value.code == 400


def test_model_page_query_count_does_not_grow_with_jobs(farm: SampleFarm) -> None:
    engine = farm.services.db.engine
    counts = []
    for path in ("/models/mlp", "/models/resnet", "/models/hostile"):
        statements: list[str] = []

        def count(*args: object, _statements: list[str] = statements) -> None:
            _statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", count)
        try:
            get(farm, path)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        counts.append(len(statements))
    assert len(set(counts)) == 1, counts  # 6, 2 and 2 build jobs: the same number of queries


def test_empty_farm_says_how_to_start(empty_app: Flask) -> None:
    client = empty_app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert 'id="empty-farm"' in page and "farm demo" in page and "farm up" in page
    assert client.get("/history?model=nothing").status_code == 404
    assert client.get("/compare").status_code == 400
    assert client.get("/engines/1").status_code == 404
    assert client.get("/jobs/1").status_code == 404
    assert client.get("/?before=x").status_code == 400
    # errors are dashboard pages that say what is missing, with the user's text escaped
    missing = client.get("/models/%3Cscript%3Ealert(1)%3C/script%3E")
    text = missing.get_data(as_text=True)
    assert missing.status_code == 404 and 'id="error"' in text
    assert HOSTILE not in text and html.escape(HOSTILE, quote=False) in text.replace("&#39;", "'")


def test_pareto_front_and_box_stats() -> None:
    # latency (lower better) vs cosine (higher better): (2, 0.99) is dominated by (1, 0.999)
    points = [(3.0, 0.9999), (1.0, 0.999), (2.0, 0.99), (5.0, 1.0), (4.0, 0.9999)]
    assert pareto_front(points, higher_is_better=True) == [1, 0, 3]
    assert pareto_front([(1.0, 0.1), (2.0, 0.01)], higher_is_better=False) == [0, 1]
    # rounding noise is not a gain: fp32 at cosine 0.99999996 and a slower engine at 1.0000000000000002
    assert pareto_front([(1.0, 0.99999996), (2.0, 1.0000000000000002)], higher_is_better=True) == [0]
    samples = list(np.random.default_rng(1).gamma(4.0, 0.5, size=999)) + [50.0]
    stats = box_stats(samples)
    assert stats is not None and stats.count == 1000
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    assert (stats.q1, stats.median, stats.q3) == (pytest.approx(q1), pytest.approx(median), pytest.approx(q3))
    assert 50.0 in stats.outliers and stats.high_whisker <= q3 + 1.5 * (q3 - q1)
    assert box_stats([]) is None


def test_chart_library_is_vendored_not_fetched() -> None:
    vendor = REPO / "farm" / "dashboard" / "static" / "vendor" / "echarts"
    record = dict(
        line.split(": ", 1) for line in (vendor / "VENDORED.txt").read_text().splitlines() if ": " in line
    )
    assert hashlib.sha256((vendor / "echarts.min.js").read_bytes()).hexdigest() == record["sha256"]
    assert record["license"].startswith("Apache-2.0") and (vendor / "LICENSE.txt").exists()
    for template in (REPO / "farm" / "dashboard" / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r'(src|href)="(https?:)?//', text), template
