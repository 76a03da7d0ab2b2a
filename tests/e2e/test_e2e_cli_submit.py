"""End to end: `farm submit --wait --junit --download` against a running farm, as a CI job runs it.

Three cases give the three exit codes: a first version passes (0); a much wider version of the same
model is judged regressed against it (1); a model whose op no backend implements fails its job (2).
The JUnit file is parsed, the downloaded engine's sha256 is checked and the engine runs. The same
test runs on the embedded farm (``farm up``: SQLite, SQLite broker) and on PostgreSQL + Redis
(``farm api`` + ``farm worker``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper
from test_e2e_farm import (
    STARTUP_SECONDS,
    FarmProcess,
    create_token,
    farm_env,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.timeout(900)

FAST_BENCHMARK = json.dumps({"warmup_ms": 50, "min_iterations": 50, "min_duration_s": 0.3})
SUBMIT_TIMEOUT_S = 400


def serving(url: str) -> bool:
    """True once the API answers and a live worker serves profile cpu (a slow answer counts as not yet)."""
    try:
        response = requests.get(f"{url}/api/v1/health", timeout=10)
    except requests.RequestException:
        return False
    return response.status_code == 200 and "cpu" in response.json()["profiles_served"]


@dataclass
class RunningFarm:
    url: str
    cwd: Path
    env: dict[str, str]
    processes: list[FarmProcess]
    token: str


def mlp(hidden: tuple[int, ...], path: Path) -> Path:
    """A zoo MLP (64 features in, 10 classes out) saved at ``path``."""
    from farm.zoo import build_model

    onnx.save_model(build_model("mlp", in_features=64, hidden=hidden, num_classes=10), str(path))
    return path


def unsupported_model(path: Path) -> Path:
    """A valid ONNX model whose only op (a custom domain's) no backend implements: its build fails."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node], "frobnicate",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save_model(model, str(path))
    return path


def farm_cli(farm: RunningFarm, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``farm ARGS`` as a CI job would: server and token from FARM_SERVER / FARM_TOKEN."""
    env = farm.env | {"FARM_SERVER": farm.url, "FARM_TOKEN": farm.token, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], cwd=farm.cwd, env=env, capture_output=True, text=True,
        timeout=SUBMIT_TIMEOUT_S + 120,
    )  # fmt: skip


def submit(farm: RunningFarm, model: Path, junit: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    precision = () if "--precision" in extra else ("--precision", "fp32")
    return farm_cli(
        farm, "submit", str(model), "--name", "mlp-ci", "--profile", "cpu", *precision, "--batch", "2",
        "--benchmark", FAST_BENCHMARK, "--wait", "--timeout", str(SUBMIT_TIMEOUT_S), "--junit", str(junit), *extra,
    )  # fmt: skip


def junit_cases(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    suite = ET.parse(path).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases)
    return suite, cases


def check_the_three_exit_codes(farm: RunningFarm, tmp_path: Path) -> None:
    # 0: the first version of a model passes (no baseline yet) and its engines are downloaded and run
    # (fp32, and int8 calibrated on uploaded data and checked on uploaded validation data)
    v1 = mlp((64, 64), tmp_path / "mlp_v1.onnx")
    calib, val = dataset(v1, tmp_path / "calib.npz", seed=1), dataset(v1, tmp_path / "val.npz", seed=2)
    passed = submit(farm, v1, tmp_path / "v1.xml", "--precision", "fp32,int8", "--calib", str(calib),
                    "--val", str(val), "--download", str(tmp_path / "engines"), "--version", "v1",
                    "--branch", "main", "--json")  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    results = json.loads(passed.stdout)
    assert results["outcome"] == "passed" and len(results["rows"]) == 2
    assert "cpu int8 batch 2: succeeded (no_baseline)" in passed.stderr  # progress lines in a CI log
    for row in results["rows"]:
        assert row["state"] == "succeeded" and row["verdict"] == "no_baseline" and row["median_ms"] > 0
        assert row["worst_cosine"] > 0.99 and row["accuracy_passed"]
    suite, cases = junit_cases(tmp_path / "v1.xml")
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert {(case.get("classname"), case.get("name")) for case in cases} == {
        ("mlp-ci.cpu", "fp32-batch2"), ("mlp-ci.cpu", "int8-batch2")
    }  # fmt: skip
    for row in results["rows"]:
        engine_path = Path(row["engine"]["path"])
        assert hashlib.sha256(engine_path.read_bytes()).hexdigest() == row["engine"]["sha256"]
        check_engine_runs(engine_path, v1, tolerance=1e-4 if row["precision"] == "fp32" else 0.1)

    # 1: a version with ~100x the multiply-adds, judged against v1 on the same host, regressed
    v2 = mlp((2048, 2048), tmp_path / "mlp_v2.onnx")
    regressed = submit(farm, v2, tmp_path / "v2.xml", "--baseline-branch", "main", "--version", "v2")
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    assert "regressed" in regressed.stdout and "mlp-ci v2" in regressed.stdout
    suite, cases = junit_cases(tmp_path / "v2.xml")
    failure = cases[0].find("failure")
    assert suite.get("failures") == "1" and failure is not None and failure.get("type") == "regression"

    # 2: the job fails (nothing implements the op): an error in the report, exit code 2
    broken = submit(farm, unsupported_model(tmp_path / "frobnicate.onnx"), tmp_path / "broken.xml",
                    "--name", "frobnicate")  # fmt: skip
    assert broken.returncode == 2, broken.stdout + broken.stderr
    suite, cases = junit_cases(tmp_path / "broken.xml")
    error = cases[0].find("error")
    assert suite.get("errors") == "1" and error is not None and "Frobnicate" in (error.text or "")

    # the other client commands against the same submissions
    submission_id = results["submission_id"]
    again = farm_cli(farm, "results", str(submission_id), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "passed"
    download = farm_cli(farm, "download", str(submission_id), "--dir", str(tmp_path / "again"))
    assert download.returncode == 0 and "verified" in download.stdout, download.stderr
    diff = farm_cli(farm, "diff", "--model", "mlp-ci", "--versions", "v1", "v2", "--json")
    assert diff.returncode == 0, diff.stderr
    rows = json.loads(diff.stdout)["rows"]
    assert rows and rows[0]["median_ratio"] > 1


def dataset(model_path: Path, path: Path, *, seed: int) -> Path:
    """16 samples for the model's input, as an .npz named after it."""
    name = onnx.load(str(model_path)).graph.input[0].name
    np.savez(path, **{name: np.random.default_rng(seed).standard_normal((16, 64)).astype(np.float32)})
    return path


def check_engine_runs(engine_path: Path, model_path: Path, *, tolerance: float) -> None:
    import onnxruntime

    from farm.compiler import Engine

    engine = Engine.load(str(engine_path))
    x = np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)
    got = engine.run({engine.inputs[0].name: x})
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    output = next(iter(got.values()))
    assert output.shape == want.shape
    assert np.linalg.norm(output - want) <= tolerance * np.linalg.norm(want)


@pytest.fixture
def embedded_farm(tmp_path: Path) -> Iterator[RunningFarm]:
    port = free_port()
    env = farm_env()
    farm = FarmProcess(["up", "--port", str(port)], cwd=tmp_path, env=env, log=tmp_path / "up.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: serving(url), STARTUP_SECONDS, "farm up and its worker", farm)
        yield RunningFarm(url, tmp_path, env, [farm], create_token(tmp_path, env))
    finally:
        farm.stop()


@pytest.fixture
def service_farm(tmp_path: Path, empty_postgres_url: str, redis_target: Any) -> Iterator[RunningFarm]:
    port = free_port()
    env = farm_env(
        FARM_DATABASE_URL=empty_postgres_url,
        FARM_BROKER_URL=redis_target.url,
        FARM_BROKER_KEY_PREFIX=redis_target.key_prefix + "cli:",
        FARM_ARTIFACTS_URL=str(tmp_path / "artifacts"),
    )
    migrate = subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], cwd=tmp_path, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr
    api = FarmProcess(["api", "--port", str(port)], cwd=tmp_path, env=env, log=tmp_path / "api.log")
    worker = FarmProcess(["worker", "--profile", "cpu"], cwd=tmp_path, env=env, log=tmp_path / "worker.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: serving(url), STARTUP_SECONDS, "farm api and the worker's heartbeat", api, worker)
        yield RunningFarm(url, tmp_path, env, [api, worker], create_token(tmp_path, env))
    finally:
        for process in (worker, api):
            process.stop()


def test_cli_exit_codes_on_the_embedded_farm(embedded_farm: RunningFarm, tmp_path: Path) -> None:
    check_the_three_exit_codes(embedded_farm, tmp_path)


@pytest.mark.services
def test_cli_exit_codes_on_postgresql_and_redis(service_farm: RunningFarm, tmp_path: Path) -> None:
    check_the_three_exit_codes(service_farm, tmp_path)


def test_unreachable_farm_is_exit_code_2(tmp_path: Path) -> None:
    model = mlp((8,), tmp_path / "m.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "farm.cli", "submit", str(model), "--profile", "cpu", "--wait",
         "--server", f"http://127.0.0.1:{free_port()}", "--token", "x"],
        env=farm_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "cannot reach the farm" in result.stderr
