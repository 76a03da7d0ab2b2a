"""End to end: real farm processes, a real ONNX model over HTTP, the inspect job's facts.

Embedded: ``farm up`` in a temp folder on its defaults (SQLite, SQLite broker, local artifacts).
Services: ``farm db upgrade``, then ``farm api`` and a separately started ``farm worker`` on
PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

STARTUP_SECONDS = 120
JOB_SECONDS = 90

pytestmark = pytest.mark.timeout(420)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def farm_env(**settings: str) -> dict[str, str]:
    """This environment without any FARM_* variable, plus ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
    env.update({"FARM_API_WORKERS": "1", "FARM_HEARTBEAT_SECONDS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(settings)
    return env


class FarmProcess:
    """A ``farm`` subcommand running in its own process group, with its output in a log file."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "farm.cli", *args],
            cwd=cwd,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` to the process (not its group) and wait; kill the group if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log_file.close()


def wait_until(predicate: Any, timeout: float, what: str, *processes: FarmProcess) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for farm_process in processes:
            if farm_process.process.poll() is not None:
                pytest.fail(f"{what}: a farm process exited early:\n{farm_process.output()[-4000:]}")
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    logs = "\n".join(p.output()[-4000:] for p in processes)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def health(base_url: str) -> dict[str, Any] | None:
    try:
        response = requests.get(f"{base_url}/api/v1/health", timeout=5)
    except requests.ConnectionError:
        return None
    return response.json() if response.status_code == 200 else None


def worker_alive(base_url: str) -> bool:
    report = health(base_url)
    return bool(report and "cpu" in report["profiles_served"])


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def create_token(cwd: Path, env: dict[str, str], scope: str = "submit") -> str:
    """A new API token from ``farm token create`` against the farm's database (writes need one)."""
    created = subprocess.run(
        [sys.executable, "-m", "farm.cli", "token", "create", f"e2e-{scope}", "--scope", scope],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[0]


def upload_and_check_facts(
    base_url: str, small_cnn: Any, name: str, *processes: FarmProcess, token: str
) -> None:
    """Upload the model over HTTP, wait for its inspect job, and check the facts it reports."""
    auth = {"Authorization": f"Bearer {token}"}
    response = requests.post(
        f"{base_url}/api/v1/models",
        files={"file": ("small_cnn.onnx", small_cnn.data, "application/octet-stream")},
        data={"name": name, "git_commit": "0123abc"},
        headers=auth,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job"]["id"]

    def finished() -> dict[str, Any] | None:
        try:
            job = requests.get(f"{base_url}/api/v1/jobs/{job_id}", timeout=5).json()
        except requests.ConnectionError:
            return None  # wait_until reports a farm process that died, with its log
        return job if job["state"] in ("succeeded", "failed", "cancelled") else None

    job = wait_until(finished, JOB_SECONDS, f"inspect job {job_id}", *processes)
    assert job["state"] == "succeeded", job
    assert job["attempts"] == 1
    facts = job["result"]["facts"]
    assert facts["opsets"] == {"ai.onnx": 17}
    assert facts["inputs"] == [{"name": "input", "dtype": "float32", "shape": small_cnn.input_shape}]
    assert facts["outputs"] == [{"name": "logits", "dtype": "float32", "shape": small_cnn.output_shape}]
    assert facts["op_histogram"] == small_cnn.op_histogram
    assert facts["parameter_count"] == small_cnn.parameter_count
    expected_macs = small_cnn.conv_macs + small_cnn.gemm_macs + small_cnn.matmul_macs
    assert facts["compute"]["macs"] == expected_macs
    assert facts["compute"]["flops"] == 2 * expected_macs

    model = requests.get(f"{base_url}/api/v1/models/{name}", timeout=5).json()
    assert model["versions"][0]["git_commit"] == "0123abc"
    page = requests.get(f"{base_url}/jobs/{job_id}", timeout=5)
    assert page.status_code == 200 and "GlobalAveragePool" in page.text
    assert name in requests.get(f"{base_url}/", timeout=5).text

    again = requests.post(
        f"{base_url}/api/v1/models",
        files={"file": ("small_cnn.onnx", small_cnn.data)},
        data={"name": name},
        headers=auth,
        timeout=30,
    )
    assert again.status_code == 200 and again.json()["job"]["id"] == job_id

    bad = requests.post(
        f"{base_url}/api/v1/models",
        files={"file": ("x.onnx", os.urandom(2048))},
        data={"name": name},
        headers=auth,
        timeout=30,
    )
    assert bad.status_code == 400 and "ONNX" in bad.json()["message"]


def test_embedded_farm_up_end_to_end(tmp_path: Path, small_cnn: Any) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    farm = FarmProcess(["up", "--port", str(port)], cwd=tmp_path, env=farm_env(), log=tmp_path / "up.log")
    try:
        wait_until(lambda: "Engine Farm is running at" in farm.output(), STARTUP_SECONDS, "farm up", farm)
        assert f"{base_url}/" in farm.output()
        wait_until(lambda: worker_alive(base_url), STARTUP_SECONDS, "the local worker's heartbeat", farm)
        report = health(base_url)
        assert report is not None and report["ok"]
        assert report["database"]["detail"].startswith("sqlite:///")
        assert "sqla+sqlite" in report["broker"]["detail"]
        token = create_token(tmp_path, farm_env())
        upload_and_check_facts(base_url, small_cnn, "small-cnn-embedded", farm, token=token)

        # the embedded defaults put everything under ./farm-data
        data_dir = tmp_path / "farm-data"
        assert (data_dir / "farm.db").is_file() and (data_dir / "broker.db").is_file()
        assert [p for p in (data_dir / "artifacts" / "sha256").rglob("*") if p.is_file()]

        children = descendants(farm.process.pid)
        assert len(children) >= 2  # the API and the worker, with their own children
        assert farm.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(pid) for pid in children):
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)], "farm up left processes running"
    finally:
        if farm.process.poll() is None:
            farm.kill_group()


@pytest.fixture
def service_farm(
    tmp_path: Path, empty_postgres_url: str, redis_target: Any
) -> Iterator[tuple[str, list[FarmProcess], str]]:
    port = free_port()
    env = farm_env(
        FARM_DATABASE_URL=empty_postgres_url,
        FARM_BROKER_URL=redis_target.url,
        FARM_BROKER_KEY_PREFIX=redis_target.key_prefix,
        FARM_ARTIFACTS_URL=str(tmp_path / "artifacts"),
    )
    migrate = subprocess.run(
        [sys.executable, "-m", "farm.cli", "db", "upgrade"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert migrate.returncode == 0, migrate.stderr
    api = FarmProcess(["api", "--port", str(port)], cwd=tmp_path, env=env, log=tmp_path / "api.log")
    worker = FarmProcess(["worker", "--profile", "cpu"], cwd=tmp_path, env=env, log=tmp_path / "worker.log")
    processes = [api, worker]
    try:
        yield f"http://127.0.0.1:{port}", processes, create_token(tmp_path, env)
    finally:
        for farm_process in processes:
            farm_process.stop(signal.SIGTERM, timeout=30)


@pytest.mark.services
def test_service_farm_end_to_end(
    service_farm: tuple[str, list[FarmProcess], str], small_cnn: Any, redis_target: Any
) -> None:
    import redis

    base_url, processes, token = service_farm
    wait_until(lambda: health(base_url), STARTUP_SECONDS, "farm api", *processes)
    wait_until(lambda: worker_alive(base_url), STARTUP_SECONDS, "the worker's heartbeat", *processes)
    report = health(base_url)
    assert report is not None
    assert report["database"]["detail"].startswith("postgresql")
    assert "redis" in report["broker"]["detail"]
    upload_and_check_facts(base_url, small_cnn, "small-cnn-services", *processes, token=token)
    # every broker key carries this session's prefix, so parallel runs cannot take each other's jobs
    keys = [key.decode() for key in redis.Redis.from_url(redis_target.url).scan_iter(count=1000)]
    assert any(key.startswith(redis_target.key_prefix) for key in keys)
