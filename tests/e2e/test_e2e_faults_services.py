"""Service faults with real processes: the broker (Redis) down and restarted empty, PostgreSQL
restarted while a worker writes results.

Each test runs its own throwaway servers on free loopback ports (a ``redis-server`` without
persistence; a PostgreSQL cluster made with ``initdb`` in a temp folder, run as the ``postgres``
user), never the machine's shared ones.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pipeline_support import (
    WorkerProcess,
    api_client,
    farm_env,
    mlp,
    row_counts,
    settings_env,
    submit,
    upload,
    wait_for,
    wait_for_jobs,
)

from farm.app import create_app
from farm.config import load_settings
from farm.db import Job, JobState
from farm.db.migrate import upgrade

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

JOB_SECONDS = 300
SLOW_BENCHMARK = {"warmup_ms": 50, "min_iterations": 50, "min_duration_s": 8}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` (``--save "" --appendonly no``): a restart loses every key."""

    def __init__(self, folder: Path) -> None:
        self.executable = shutil.which("redis-server") or pytest.skip("redis-server is not installed")
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(self.executable), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _pings(self.url), 20, "redis-server to start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def test_broker_down_is_a_quick_503_and_running_and_queued_jobs_survive_a_redis_restart(
    tmp_path: Path, postgres_url: str
) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    server = RedisServer(tmp_path)
    fields = {
        "database_url": postgres_url,
        "broker_url": server.url,
        "artifacts_url": str(tmp_path / "artifacts"),
    }
    settings = load_settings(settings_env(fields))
    upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    services = app.extensions["farm"]
    workers: list[WorkerProcess] = []
    try:
        upload(services, app, "mlp-broker", mlp((32,)))
        queued = submit(services, app, "mlp-broker", profiles=["cpu"], precisions=["fp32", "fp16", "int8"],
                        options={"benchmark": SLOW_BENCHMARK})  # fmt: skip
        env = farm_env(**settings_env(fields))
        workers.append(WorkerProcess("cpu", "through-broker-restart@faults", cwd=tmp_path, env=env))

        def one_running() -> bool:
            with services.db.session() as session:
                jobs = [session.get(Job, job_id) for job_id in queued]
                return any(str((j.progress or {}).get("step", "")).startswith("benchmark") for j in jobs if j)

        wait_for(one_running, JOB_SECONDS, "a job to be running", workers)
        server.stop()  # the broker goes away with one job running and two queued
        client = api_client(app, services)
        started = time.monotonic()
        response = client.post("/api/v1/submissions", json={"model": "mlp-broker", "profiles": ["cpu"],
                                                              "precisions": ["fp32"], "batch_sizes": [2]})  # fmt: skip
        elapsed = time.monotonic() - started
        assert response.status_code == 503, (response.status_code, response.get_json())
        body = response.get_json()
        assert body["error"] and "broker" in body["message"].lower(), body
        assert elapsed < 30, f"the 503 took {elapsed:.1f} s"
        assert client.get("/api/v1/jobs").status_code == 200  # reads need only the database
        server.start()  # empty: every queued message is gone
        jobs = wait_for_jobs(services, queued, JOB_SECONDS, workers)
        for job in jobs.values():
            assert job.state == JobState.SUCCEEDED, (job.state, job.error, workers[0].output()[-3000:])
            counts = row_counts(services, job.id)
            assert counts["engines"] == 1 and counts["benchmarks"] == 1 and counts["accuracy"] == 1, counts
    finally:
        for worker in workers:
            worker.stop()
        services.db.dispose()
        server.stop()


class PostgresCluster:
    """A throwaway PostgreSQL cluster (initdb in a temp folder, run as user ``postgres``)."""

    def __init__(self, folder: Path) -> None:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not candidates or shutil.which("runuser") is None:
            pytest.skip("PostgreSQL server binaries (initdb/pg_ctl) or runuser are not installed")
        self.bin = Path(candidates[-1]).parent
        self.data = folder / "pgdata"
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder.parent, 0o755)
        os.chmod(folder, 0o777)
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def _as_postgres(self, *command: str) -> None:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot run {command[0]} as postgres: {result.stderr.strip()[:300]}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, listen: str = "127.0.0.1") -> None:
        options = f"-p {self.port} -c listen_addresses='{listen}' -k {self.data}"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-l",
                          str(self.data / "server.log"), "start")  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    # not under pytest's tmp_path: its parents are private to root, and the server runs as postgres
    folder = Path(tempfile.mkdtemp(prefix="farm-faults-pg-"))
    cluster = PostgresCluster(folder / "pg")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_postgres_restart_while_a_worker_writes_results(
    tmp_path: Path, redis_target: Any, postgres_cluster: PostgresCluster
) -> None:
    fields = {
        "database_url": postgres_cluster.url,
        "broker_url": redis_target.url,
        "broker_key_prefix": f"{redis_target.key_prefix}pg-restart:",
        "artifacts_url": str(tmp_path / "artifacts"),
    }
    settings = load_settings(settings_env(fields))
    upgrade(settings.sqlalchemy_url)
    app = create_app(settings)
    services = app.extensions["farm"]
    worker = WorkerProcess("cpu", "pg-restart@faults", cwd=tmp_path, env=farm_env(**settings_env(fields)))
    try:
        upload(services, app, "mlp-pg", mlp((64,)))
        job_id = submit(services, app, "mlp-pg", profiles=["cpu"], precisions=["fp32"],
                        options={"benchmark": SLOW_BENCHMARK})[0]  # fmt: skip

        def benchmarking() -> bool:
            with services.db.session() as session:
                job = session.get(Job, job_id)
                return job is not None and str((job.progress or {}).get("step", "")).startswith("benchmark")

        wait_for(benchmarking, JOB_SECONDS, "the benchmark to start", [worker])
        services.db.dispose()
        postgres_cluster.stop()  # immediate shutdown: every connection is cut mid-flight
        time.sleep(5)  # the worker's heartbeats and progress writes fail meanwhile
        postgres_cluster.start()
        job = wait_for_jobs(services, [job_id], JOB_SECONDS, [worker])[job_id]
        assert job.state == JobState.SUCCEEDED, (job.error, worker.output()[-3000:])
        assert row_counts(services, job_id) == {"engines": 1, "benchmarks": 1, "accuracy": 1,
                                                "verdicts": row_counts(services, job_id)["verdicts"]}  # fmt: skip
        assert row_counts(services, job_id)["verdicts"] >= 1
        assert "OperationalError" in worker.output()  # the worker did hit the outage, and rode it out
    finally:
        worker.stop()
        services.db.dispose()


class NetworkNamespace:
    """A network namespace joined to the host by a veth pair; ``cut()`` takes the link down."""

    def __init__(self) -> None:
        if shutil.which("ip") is None:
            pytest.skip("iproute2 (ip) is not installed")
        suffix = secrets.token_hex(3)
        self.name, self.host_link, self.inner_link = f"farmflt{suffix}", f"fh{suffix}", f"fn{suffix}"
        subnet = 100 + secrets.randbelow(150)
        self.host_ip, self.inner_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self._created = False
        setup = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.inner_link],
            ["ip", "link", "set", self.inner_link, "netns", self.name],
            ["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_link],
            ["ip", "link", "set", self.host_link, "up"],
            [
                "ip",
                "netns",
                "exec",
                self.name,
                "ip",
                "addr",
                "add",
                f"{self.inner_ip}/24",
                "dev",
                self.inner_link,
            ],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", self.inner_link, "up"],
            ["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"],
        ]
        for command in setup:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                self.remove()
                pytest.skip(
                    f"cannot build a network namespace here ({' '.join(command)}: {result.stderr.strip()})"
                )
            self._created = True

    def cut(self) -> None:
        subprocess.run(["ip", "link", "set", self.host_link, "down"], check=True)

    def restore(self) -> None:
        subprocess.run(["ip", "link", "set", self.host_link, "up"], check=True)

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class NamespacedWorker(WorkerProcess):
    """``farm worker --profile cpu`` started inside a network namespace (``ip netns exec``)."""

    def __init__(self, namespace: str, name: str, *, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, "-m", "farm.cli", "worker", "--profile", "cpu",
             "--name", name],
            cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_worker_cut_off_by_its_network_loses_its_lease_and_its_late_result_is_refused(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """The first worker runs in its own network namespace, reaching PostgreSQL and Redis over a veth
    link; the link is taken down mid-benchmark, a second worker takes the job over, the link comes
    back, and the first worker's late result must not be written."""
    namespace = NetworkNamespace()
    server = RedisServer(tmp_path)
    workers: list[WorkerProcess] = []
    try:
        with (postgres_cluster.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {namespace.host_ip.rsplit('.', 1)[0]}.0/24 trust\n")
        postgres_cluster.stop()
        postgres_cluster.start(listen=f"127.0.0.1,{namespace.host_ip}")
        control = redis.Redis.from_url(server.url)
        control.config_set("bind", f"127.0.0.1 {namespace.host_ip}")
        control.config_set("protected-mode", "no")  # reachable only on loopback and the private veth link
        local = {"database_url": postgres_cluster.url, "broker_url": server.url,
                 "artifacts_url": str(tmp_path / "artifacts")}  # fmt: skip
        remote = local | {
            "database_url": postgres_cluster.url.replace("127.0.0.1", namespace.host_ip),
            "broker_url": server.url.replace("127.0.0.1", namespace.host_ip),
        }
        settings = load_settings(settings_env(local))
        upgrade(settings.sqlalchemy_url)
        app = create_app(settings)
        services = app.extensions["farm"]
        upload(services, app, "mlp-netns", mlp((64,)))
        job_id = submit(services, app, "mlp-netns", profiles=["cpu"], precisions=["fp32"],
                        options={"benchmark": SLOW_BENCHMARK})[0]  # fmt: skip
        first = NamespacedWorker(
            namespace.name, "cut-off@faults", cwd=tmp_path, env=farm_env(**settings_env(remote))
        )
        workers.append(first)

        def step() -> str:
            with services.db.session() as session:
                job = session.get(Job, job_id)
                return str((job.progress or {}).get("step", "")) if job else ""

        wait_for(lambda: step().startswith("benchmark"), JOB_SECONDS, "the benchmark to start", workers)
        namespace.cut()
        second = WorkerProcess("cpu", "takeover@faults", cwd=tmp_path, env=farm_env(**settings_env(local)))
        workers.append(second)

        def taken_over() -> bool:
            with services.db.session() as session:
                job = session.get(Job, job_id)
                return job is not None and job.worker_name == second.name

        wait_for(taken_over, 120, "the second worker to take the job over", workers)
        namespace.restore()  # the first worker comes back with its stale claim
        job = wait_for_jobs(services, [job_id], JOB_SECONDS, workers)[job_id]
        assert job.state == JobState.SUCCEEDED and job.worker_name == second.name and job.attempts == 2, (
            job.error
        )
        wait_for(lambda: "taken over by takeover@faults" in first.output(), 120,
                 "the cut-off worker to give up its stale run", workers)  # fmt: skip
        assert row_counts(services, job_id)["engines"] == 1
        assert row_counts(services, job_id)["benchmarks"] == 1
        with services.db.session() as session:
            final = session.get(Job, job_id)
            assert final is not None and final.worker_name == second.name and final.attempts == 2
        services.db.dispose()
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        namespace.remove()
