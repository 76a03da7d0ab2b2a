"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Against the sample farm whose results the real worker pipeline produced (tests/dashboard_support.py):
every page loads without a script error and draws its charts with the right number of series; a
user clicks model → compare → engine → download and gets the engine whose sha256 the page shows;
a history point opens its job; a running job's page follows it live until its results appear;
hostile user text shows as text and no dialog ever opens.

Screenshots go to a temporary folder, or to ``$DASHBOARD_SCREENSHOTS`` (``docs/images`` for the
README: ``DASHBOARD_SCREENSHOTS=docs/images pytest tests/e2e/test_e2e_dashboard_browser.py``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dashboard_support import HOSTILE, HOSTILE_BRANCH, SampleFarm, serve, shared_sample_farm
from sqlalchemy import select

from farm.db import BenchmarkResult, Engine, Job, JobState, ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]  # fmt: skip
VIEWPORT = {"width": 1400, "height": 900}


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> SampleFarm:
    return shared_sample_farm(lambda: tmp_path_factory.mktemp("dashboard-farm"))


@pytest.fixture(scope="module")
def base_url(farm: SampleFarm) -> Iterator[str]:
    with serve(farm.app) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = (
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/install_chromium.sh)"
        )
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("DASHBOARD_SCREENSHOTS")
    folder = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watched:
    """A page that records script errors, failed requests and dialogs."""

    def __init__(self, browser: Any) -> None:
        self.context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        self.page.on(
            "console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, url: str) -> Any:
        response = self.page.goto(url)
        assert response is not None and response.status == 200, url
        self.page.wait_for_load_state("networkidle")
        return self.page

    def rendered_series(self) -> dict[str, int]:
        """Series ECharts actually holds for every chart on the page, by element id."""
        counts: dict[str, int] = self.page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('[data-chart]')].map(el => {
                   const chart = echarts.getInstanceByDom(el);
                   const drawn = el.querySelector('svg') && el.querySelector('svg').getBoundingClientRect().width > 0;
                   return [el.id, chart && drawn ? chart.getOption().series.length : -1];
               }))"""
        )
        return counts

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any) -> Iterator[Watched]:
    watched = Watched(browser)
    yield watched
    watched.close()


def ids(farm: SampleFarm) -> dict[str, int]:
    """Job and engine ids the pages link to."""
    with farm.services.db.session() as session:
        engines = dict(session.execute(select(Engine.job_id, Engine.id)).all())
    return {
        "v1_fp32": farm.jobs["mlp v1"][0],
        "v2_fp32": farm.jobs["mlp v2"][0],
        "v2_int8": farm.jobs["mlp v2"][2],
        "resnet_engine": engines[farm.jobs["resnet v1"][0]],
        "v2_engine": engines[farm.jobs["mlp v2"][0]],
        "hostile_job": farm.jobs["hostile"][0],
        "hostile_engine": engines[farm.jobs["hostile"][0]],
    }


def has_outliers(samples: list[float]) -> bool:
    """Whether Tukey's fences (1.5 × IQR beyond the quartiles) leave any sample outside."""
    q1, q3 = np.percentile(samples, [25, 75])
    return bool(
        np.any((np.asarray(samples) < q1 - 1.5 * (q3 - q1)) | (np.asarray(samples) > q3 + 1.5 * (q3 - q1)))
    )


def test_every_page_loads_and_draws_its_charts(
    farm: SampleFarm, base_url: str, tab: Watched, shots: Path
) -> None:
    known = ids(farm)
    with farm.services.db.session() as session:
        samples = {
            (job_id, role): list(values)
            for job_id, role, values in session.execute(
                select(BenchmarkResult.job_id, BenchmarkResult.role, BenchmarkResult.samples_ms).where(
                    BenchmarkResult.job_id.in_([known["v1_fp32"], known["v2_fp32"], known["v2_int8"]])
                )
            )
        }
        precisions = (
            session.execute(
                select(Job.precision).where(Job.id.in_(farm.jobs["mlp v2"]), Job.state == JobState.SUCCEEDED)
            )
            .scalars()
            .all()
        )
    compare_outliers = any(
        has_outliers(samples[(j, "candidate")]) for j in (known["v1_fp32"], known["v2_fp32"])
    )
    job_outliers = any(has_outliers(samples[(known["v2_int8"], role)]) for role in ("candidate", "baseline"))
    # series each chart must draw: model: one per precision of the newest version + the frontier line;
    # history: noise band, baseline, value, regressed, improved; compare: a box per engine (+ outliers);
    # engine: one bar series; job: this engine's and the interleaved baseline's box (+ outliers)
    pages = {
        "overview": ("/", {}),
        "model": ("/models/mlp", {"frontier-1": len(precisions) + 1}),
        "history": ("/history?model=mlp&profile=cpu&precision=fp32&batch=4&metric=median_ms", {"history-chart": 5}),
        "compare": ("/compare?model=mlp&va=1&vb=2&precision=fp32",
                    {"latency-box": 2 + compare_outliers, "layer-bars": 2}),
        "engine": (f"/engines/{known['resnet_engine']}", {"engine-layers": 1}),
        "job": (f"/jobs/{known['v2_int8']}", {"job-box": 2 + job_outliers}),
    }  # fmt: skip
    for name, (path, expected) in pages.items():
        page = tab.open(base_url + path)
        drawn = tab.rendered_series()
        assert set(drawn) == set(expected), (name, drawn)
        assert drawn == expected, name
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    # the model chart's series are exactly the precisions built, and the compare boxes hold both engines
    page = tab.open(base_url + "/models/mlp")
    names = page.evaluate(
        "() => echarts.getInstanceByDom(document.getElementById('frontier-1')).getOption().series.map(s => s.name)"
    )
    assert {"fp32", "fp16", "int8"} <= set(names)
    assert tab.errors == [] and tab.dialogs == []


def test_click_model_compare_engine_download(
    farm: SampleFarm, base_url: str, tab: Watched, tmp_path: Path
) -> None:
    page = tab.open(base_url + "/")
    page.click("#models a:text-is('mlp')")
    page.wait_for_url("**/models/mlp")
    page.click("#compare-versions")
    page.wait_for_url("**/compare?model=mlp*")
    assert page.locator("#versions").inner_text().count("compare engines") == 3
    # pick the int8 row, then open engine B
    page.locator("#versions tr", has_text="int8").locator("a", has_text="compare engines").click()
    page.wait_for_url("**precision=int8*")
    page.wait_for_load_state("networkidle")
    assert "int8" in page.locator("#side-b").inner_text()
    page.click("#side-b a.engine-link")
    page.wait_for_url("**/engines/*")
    shown_sha = page.locator("#engine-sha256").inner_text().strip()
    with page.expect_download() as download_info:
        page.click("#download-button")
    download = download_info.value
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.name.startswith("mlp-v2-wider-cpu-int8") and saved.suffix == ".engine"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == shown_sha
    with farm.services.db.session() as session:
        stored = session.execute(
            select(Engine.sha256).join(Job, Engine.job_id == Job.id).where(Job.id == farm.jobs["mlp v2"][2])
        ).scalar_one()
    assert shown_sha == stored
    assert tab.errors == []


def test_pick_any_two_engines_on_the_model_page(farm: SampleFarm, base_url: str, tab: Watched) -> None:
    page = tab.open(base_url + "/models/mlp")
    a_job, b_job = farm.jobs["mlp v1"][0], farm.jobs["mlp v2"][2]  # v1 fp32 against v2 int8
    assert page.locator("#compare-selected").get_attribute("aria-disabled") == "true"
    page.check(f"input.pick-job[value='{a_job}']")
    page.check(f"input.pick-job[value='{b_job}']")
    assert page.locator("#compare-selected").get_attribute("aria-disabled") == "false"
    page.click("#compare-selected")
    page.wait_for_url(f"**/compare?a={a_job}&b={b_job}")
    page.wait_for_load_state("networkidle")
    assert "fp32" in page.locator("#side-a").inner_text() and "int8" in page.locator("#side-b").inner_text()
    assert tab.rendered_series()["layer-bars"] == 2 and tab.errors == []


def test_history_point_opens_its_job(farm: SampleFarm, base_url: str, tab: Watched) -> None:
    page = tab.open(base_url + "/history?model=mlp&profile=cpu&precision=fp32&batch=4&metric=median_ms")
    x, y = page.evaluate(
        """() => {
            const el = document.getElementById('history-chart');
            const chart = echarts.getInstanceByDom(el);
            const value = chart.getOption().series.find(s => s.name === 'value').data[1].value;
            const [px, py] = chart.convertToPixel({seriesName: 'value'}, [1, value]);
            const box = el.getBoundingClientRect();
            return [box.left + px, box.top + py];
        }"""
    )
    page.mouse.click(x, y)
    page.wait_for_url(f"**/jobs/{farm.jobs['mlp v2'][0]}")
    assert "Verdict" in page.locator("#verdict").inner_text()


def test_hostile_text_is_text_and_no_dialog_opens(farm: SampleFarm, base_url: str, tab: Watched) -> None:
    known = ids(farm)
    for path in ("/", "/models/hostile", f"/jobs/{known['hostile_job']}", f"/engines/{known['hostile_engine']}",
                 f"/compare?a={known['hostile_job']}&b={known['hostile_job']}"):  # fmt: skip
        page = tab.open(base_url + path)
        page.wait_for_timeout(300)
        body = page.locator("main").inner_text()
        if path != "/":
            assert HOSTILE in body, path  # the literal text is on the page...
        assert page.locator("main script:not([type='application/json'])").count() == 0  # ...no script element
        assert page.locator("main img").count() == 0, path
    page = tab.open(base_url + f"/jobs/{known['hostile_job']}")
    assert HOSTILE_BRANCH in page.locator("#job-facts").inner_text()
    assert page.locator("#job-facts a[href^='javascript']").count() == 0
    assert tab.dialogs == [] and tab.errors == []


def test_job_page_follows_a_running_job(farm: SampleFarm, base_url: str, tab: Watched, shots: Path) -> None:
    from dashboard_support import FAST_BENCHMARK, upload

    from farm.api.commands import VersionMetadata
    from farm.api.submissions import CreateSubmissionCommand, SubmissionRequest
    from farm.dashboard.demo import demo_models
    from farm.worker.pipeline import BuildJobCommand

    # its own model: the sample farm is shared with the page tests, whose mlp rows must not change
    mlp = next(m for m in demo_models(only=["mlp"]))
    upload(farm, "mlp-live", mlp.onnx_bytes(), VersionMetadata(label="live"))
    with farm.app.app_context():
        command = CreateSubmissionCommand(
            farm.services,
            SubmissionRequest(model="mlp-live", profiles=["cpu"], precisions=["fp32"], batch_sizes=[2],
                              options={"benchmark": FAST_BENCHMARK | {"min_duration_s": 2.0}}),
        )  # fmt: skip
        command.validate()
        job_id = command.run().job_ids[0]
    page = tab.open(base_url + f"/jobs/{job_id}")
    assert page.locator("#live-state").inner_text() == "queued"
    services = farm.services
    worker = threading.Thread(
        target=lambda: BuildJobCommand(
            job_id, db=services.db, store=services.store, worker_name="cpu.live@dashboard", lease_seconds=300
        ).run(),
        name="pipeline",
    )
    worker.start()
    try:
        page.wait_for_function(
            "() => ['building', 'benchmarking', 'checking'].includes(document.getElementById('live-state')?.textContent)",
            timeout=120_000,
        )
        page.wait_for_function("() => (document.getElementById('live-log')?.textContent || '').includes('step')",
                               timeout=120_000)  # fmt: skip
        page.screenshot(path=str(shots / "job-live.png"), full_page=True)
        # when the job finishes the page reloads itself with the results
        page.wait_for_selector("#verdict", timeout=180_000)
    finally:
        worker.join(timeout=300)
    page.wait_for_load_state("networkidle")
    assert "succeeded" in page.locator("h1").inner_text()
    assert page.locator("#benchmark").count() == 1 and page.locator("#log").count() == 1
    assert tab.errors == []
    with services.db.session() as session:
        version = session.execute(select(ModelVersion).join(Job).where(Job.id == job_id)).scalar_one()
        assert version.number == 1


def test_screenshots_are_shown_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in ("overview", "model", "compare", "history", "engine", "job"):
        assert f"docs/images/{name}.png" in readme
        assert (Path(__file__).resolve().parents[2] / "docs" / "images" / f"{name}.png").exists()
