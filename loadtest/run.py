"""Load test of the PostgreSQL + Redis deployment, on loopback only (``make loadtest``).

It starts its own pieces: a ``redis-server`` without persistence on a free port, a fresh database on
the local PostgreSQL (dropped at the end), a temp artifact store, ``farm api`` (gunicorn) and
``farm worker`` processes. Then two phases, each bounded in count and time:

1. **HTTP load**: ``--clients`` threads for ``--seconds``, each looping over a mix of submitting
   (a model upload, which queues an inspect job; a build submission for a profile no worker
   serves, so it stays queued), polling (job, submission, job list) and downloading (an engine
   built before the phase, ``If-None-Match`` and ``Range`` included). Reported: requests per
   second, p50/p99 latency per endpoint, status counts, 5xx count and transport errors.
2. **Dispatch**: ``--jobs`` inspect jobs (the cheapest kind, so this measures dispatch, not
   compilation) queued at once over ``--workers`` workers (frozen with SIGSTOP while the jobs are
   enqueued, then thawed: the drain is timed from the thaw). Reported: all finished, none run twice
   (attempts), none lost, the queue's drain rate and the dispatch overhead per job
   (wall time × workers / jobs − mean time a job spent running).

The result is printed and written as JSON (``--out``). Exit status 1 when a goal is missed: any 5xx
or transport error, read p99 above ``--read-p99-ms``, or a job not finished exactly once.

    .venv/bin/python loadtest/run.py --clients 50 --seconds 60 --jobs 500 --workers 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get("LOADTEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
READ_ENDPOINTS = ("GET job", "GET submission", "GET jobs list", "GET engine download", "GET engine range",
                  "GET engine 304")  # fmt: skip


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def tiny_model(tag: str) -> bytes:
    """A 4→8→2 MLP; ``tag`` in the doc string makes distinct bytes (a new version) per call."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w1"),
         numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "w2")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=tag)
    return model.SerializeToString()


@dataclass
class Deployment:
    """The processes and URLs of the farm under test."""

    folder: Path
    env: dict[str, str]
    api_url: str
    database_url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pause_workers(self) -> None:
        """Freeze every worker (SIGSTOP to its process group)."""
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGSTOP)

    def resume_workers(self) -> None:
        """Thaw every worker (SIGCONT)."""
        for worker in self.workers:
            os.killpg(worker.pid, signal.SIGCONT)

    def start(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        """Start ``farm ARGS`` in its own process group, output to ``log``."""
        out = open(self.folder / log, "wb")  # noqa: SIM115 - the process owns it until the end
        process = subprocess.Popen([sys.executable, "-m", "farm.cli", *args], cwd=self.folder, env=self.env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process


@contextmanager
def deployment(workers: int, api_workers: int) -> Iterator[Deployment]:
    """Redis, a fresh PostgreSQL database, a store, ``farm api`` and ``workers`` workers."""
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="farm-loadtest-"))
    redis_port, api_port = free_port(), free_port()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise SystemExit("redis-server is not installed")
    redis_process = subprocess.Popen(
        [redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    database = f"farm_load_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    database_url = (
        POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        + f"/{database}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update({
        "FARM_DATABASE_URL": database_url, "FARM_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "FARM_ARTIFACTS_URL": str(folder / "artifacts"), "FARM_HOST": "127.0.0.1", "FARM_PORT": str(api_port),
        "FARM_API_WORKERS": str(api_workers), "FARM_PUBLIC_READ": "false", "FARM_LOG_LEVEL": "WARNING",
        "FARM_HEARTBEAT_SECONDS": "2", "PYTHONPATH": str(REPO),
    })  # fmt: skip
    farm = Deployment(folder, env, f"http://127.0.0.1:{api_port}", database_url)
    try:
        subprocess.run([sys.executable, "-m", "farm.cli", "db", "upgrade"], env=env, cwd=folder, check=True,
                       capture_output=True)  # fmt: skip
        farm.start("api", log="api.log")
        for index in range(workers):
            worker = farm.start(
                "worker", "--profile", "cpu", "--name", f"load{index}@loadtest", log=f"worker{index}.log"
            )
            farm.workers.append(worker)
        wait_until(
            lambda: requests.get(f"{farm.api_url}/api/v1/health", timeout=2).status_code < 500, 90, "the API"
        )
        yield farm
    finally:
        farm.resume_workers()
        for process in farm.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in farm.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        redis_process.kill()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if os.environ.get("LOADTEST_KEEP"):
            print(f"kept the deployment's folder (logs): {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def issue_token(farm: Deployment) -> str:
    """A token with scope submit, created through the CLI like an operator would."""
    result = subprocess.run([sys.executable, "-m", "farm.cli", "token", "create", "loadtest", "--scope", "submit"],
                            env=farm.env, cwd=farm.folder, check=True, capture_output=True, text=True)  # fmt: skip
    return result.stdout.strip().splitlines()[0].strip()  # the token is the first line


def session_for(token: str) -> requests.Session:
    """An HTTP session sending ``token``."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def upload(session: requests.Session, api: str, name: str, data: bytes) -> requests.Response:
    """POST a model version."""
    return session.post(f"{api}/api/v1/models", data={"name": name},
                        files={"file": (f"{name}.onnx", io.BytesIO(data))}, timeout=30)  # fmt: skip


def wait_for_jobs(farm: Deployment, job_ids: list[int], timeout: float) -> list[dict[str, Any]]:
    """The jobs' rows (state, attempts, times) once every one is final."""
    import psycopg

    url = farm.database_url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            rows = connection.execute(
                "SELECT id, state, attempts, started_at, finished_at, worker_name FROM jobs WHERE id = ANY(%s)",
                (job_ids,),
            ).fetchall()
            final = [
                r
                for r in rows
                if r[1] in ("SUCCEEDED", "FAILED", "CANCELLED", "succeeded", "failed", "cancelled")
            ]
            if len(final) == len(job_ids) or time.monotonic() > deadline:
                return [dict(zip(("id", "state", "attempts", "started_at", "finished_at", "worker"), r, strict=True))
                        for r in rows]  # fmt: skip
            time.sleep(0.2)


def build_engine(farm: Deployment, session: requests.Session) -> int:
    """Build the tiny model on cpu before the load phase; the engine id to download."""
    assert upload(session, farm.api_url, "load-engine", tiny_model("engine")).status_code in (200, 201)
    response = session.post(f"{farm.api_url}/api/v1/submissions", json={
        "model": "load-engine", "profiles": ["cpu"], "precisions": ["fp32"], "batch_sizes": [1],
        "options": {"tuning_level": 0, "benchmark": {"warmup_ms": 10, "min_iterations": 10, "min_duration_s": 0.1}},
    }, timeout=30)  # fmt: skip
    response.raise_for_status()
    job_id = response.json()["jobs"][0]["id"]
    wait_for_jobs(farm, [job_id], 300)
    results = session.get(f"{farm.api_url}/api/v1/jobs/{job_id}/results", timeout=30).json()
    engine = results.get("engine") or {}
    if not engine.get("id"):
        raise RuntimeError(f"the engine build failed: {json.dumps(results)[:500]}")
    return int(engine["id"])


@dataclass
class Samples:
    """Latencies (ms) and statuses per endpoint, shared by the client threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, endpoint: str, started: float, response: requests.Response | None, error: str = ""
    ) -> None:
        with self.lock:
            if response is None:
                self.transport_errors[f"{endpoint}: {error}"] += 1
                return
            self.latencies[endpoint].append((time.perf_counter() - started) * 1000)
            self.statuses[endpoint][response.status_code] += 1


def client_loop(index: int, farm: Deployment, token: str, engine_id: int, etag: str, stop: float,
                samples: Samples, job_ids: list[int], submission_ids: list[int], think_s: float) -> None:  # fmt: skip
    """One client: a weighted mix of submit, poll and download until ``stop``."""
    rng = random.Random(index)
    session = session_for(token)
    api = farm.api_url
    counter = 0
    while time.perf_counter() < stop:
        counter += 1
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.05:
                endpoint = "POST model upload"
                response = upload(session, api, f"load-c{index}", tiny_model(f"c{index}-{counter}"))
                if response.status_code in (200, 201):
                    job_ids.append(response.json()["job"]["id"])
            elif roll < 0.10:
                endpoint = "POST submission"
                response = session.post(f"{api}/api/v1/submissions", json={
                    "model": "load-engine", "profiles": ["nvidia-t4"], "precisions": ["fp32"],
                    "batch_sizes": [1 + (counter % 4)], "idempotency_key": f"c{index}-{counter}",
                }, timeout=30)  # fmt: skip
                if response.status_code in (200, 201):
                    submission_ids.append(response.json()["id"])
            elif roll < 0.40 and job_ids:
                endpoint = "GET job"
                response = session.get(f"{api}/api/v1/jobs/{rng.choice(job_ids)}", timeout=30)
            elif roll < 0.55 and submission_ids:
                endpoint = "GET submission"
                response = session.get(f"{api}/api/v1/submissions/{rng.choice(submission_ids)}", timeout=30)
            elif roll < 0.70:
                endpoint = "GET jobs list"
                response = session.get(f"{api}/api/v1/jobs?limit=20", timeout=30)
            elif roll < 0.85:
                endpoint = "GET engine download"
                response = session.get(f"{api}/api/v1/engines/{engine_id}/download", timeout=30)
            elif roll < 0.93:
                endpoint = "GET engine range"
                response = session.get(f"{api}/api/v1/engines/{engine_id}/download",
                                       headers={"Range": "bytes=100-4195"}, timeout=30)  # fmt: skip
            else:
                endpoint = "GET engine 304"
                response = session.get(f"{api}/api/v1/engines/{engine_id}/download",
                                       headers={"If-None-Match": etag}, timeout=30)  # fmt: skip
            response.content  # noqa: B018 - read the whole body, as a real client does
            samples.record(endpoint, started, response)
        except requests.RequestException as exc:
            samples.record(endpoint, started, None, type(exc).__name__)
        if think_s:
            time.sleep(rng.uniform(0.5, 1.5) * think_s)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def http_phase(farm: Deployment, token: str, clients: int, seconds: float, think_s: float) -> dict[str, Any]:
    """Phase 1: ``clients`` threads for ``seconds``; the figures per endpoint."""
    session = session_for(token)
    engine_id = build_engine(farm, session)
    etag = session.get(f"{farm.api_url}/api/v1/engines/{engine_id}/download", timeout=30).headers.get(
        "ETag", ""
    )
    job_ids: list[int] = []
    submission_ids: list[int] = []
    samples = Samples()
    started = time.perf_counter()
    stop = started + seconds
    threads = [threading.Thread(target=client_loop, args=(i, farm, token, engine_id, etag, stop, samples,
                                                         job_ids, submission_ids, think_s)) for i in range(clients)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    endpoints = {}
    for name, values in sorted(samples.latencies.items()):
        endpoints[name] = {
            "requests": len(values), "p50_ms": round(percentile(values, 0.50), 1),
            "p99_ms": round(percentile(values, 0.99), 1), "max_ms": round(max(values), 1),
            "statuses": dict(sorted(samples.statuses[name].items())),
        }  # fmt: skip
    total = sum(len(v) for v in samples.latencies.values())
    server_errors = sum(n for c in samples.statuses.values() for s, n in c.items() if s >= 500)
    return {
        "clients": clients, "think_ms": think_s * 1000, "seconds": round(elapsed, 1), "requests": total,
        "requests_per_second": round(total / elapsed, 1), "server_errors_5xx": server_errors,
        "transport_errors": dict(samples.transport_errors), "endpoints": endpoints,
    }  # fmt: skip


def dispatch_phase(farm: Deployment, token: str, jobs: int, workers: int, timeout: float) -> dict[str, Any]:
    """Phase 2: ``jobs`` inspect jobs queued at once over the workers; drain rate and overhead."""
    from farm.api.commands import UploadModelCommand, VersionMetadata
    from farm.app import create_app
    from farm.config import load_settings

    settings = load_settings({k: v for k, v in farm.env.items() if k.startswith("FARM_")})
    app = create_app(settings)
    services = app.extensions["farm"]
    commands = []
    with app.app_context():
        for index in range(jobs):  # checked and stored first, so the queue fills at once below
            command = UploadModelCommand(services, name=f"dispatch-{index % 20}", stream=io.BytesIO(tiny_model(f"d{index}")),
                                         filename="m.onnx", metadata=VersionMetadata())  # fmt: skip
            command.validate()
            commands.append(command)
        farm.pause_workers()  # so all jobs are queued before any runs: the drain is measured alone
        try:
            enqueue_started = time.perf_counter()
            job_ids = [command.run().job_id for command in commands]
            queued_s = time.perf_counter() - enqueue_started
        finally:
            farm.resume_workers()
        started = time.perf_counter()
    rows = wait_for_jobs(farm, job_ids, timeout)
    drained_s = time.perf_counter() - started
    services.db.dispose()
    states = Counter(str(r["state"]).lower() for r in rows)
    attempts = Counter(int(r["attempts"]) for r in rows)
    run_s = [
        (r["finished_at"] - r["started_at"]).total_seconds()
        for r in rows
        if r["finished_at"] and r["started_at"]
    ]
    finished_times = sorted(r["finished_at"] for r in rows if r["finished_at"])
    span = (finished_times[-1] - min(r["started_at"] for r in rows if r["started_at"])).total_seconds()
    mean_run = statistics.fmean(run_s) if run_s else float("nan")
    return {
        "jobs": jobs, "workers": workers, "enqueue_seconds": round(queued_s, 2),
        "drain_seconds": round(drained_s, 2), "drain_rate_jobs_per_second": round(jobs / drained_s, 1),
        "first_start_to_last_finish_seconds": round(span, 2), "states": dict(states),
        "attempts": {str(k): v for k, v in sorted(attempts.items())}, "lost": jobs - len(rows),
        "mean_job_run_ms": round(mean_run * 1000, 1),
        "dispatch_overhead_ms_per_job": round((drained_s * workers / jobs - mean_run) * 1000, 1),
        "per_worker": dict(Counter(str(r["worker"]) for r in rows)),
    }  # fmt: skip


def main() -> int:
    """Run both phases; print and save the figures; exit 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--api-workers", type=int, default=4, help="gunicorn processes")
    parser.add_argument("--think-ms", type=float, default=0, help="mean pause between a client's requests")
    parser.add_argument("--read-p99-ms", type=float, default=200)
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path(".cache/loadtest.json"))
    args = parser.parse_args()
    with deployment(args.workers, args.api_workers) as farm:
        token = issue_token(farm)
        report: dict[str, Any] = {
            "http": http_phase(farm, token, args.clients, args.seconds, args.think_ms / 1000)
        }
        print(json.dumps(report, indent=2), flush=True)
        if args.jobs:
            report["dispatch"] = dispatch_phase(farm, token, args.jobs, args.workers, args.drain_timeout)
            print(json.dumps(report["dispatch"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    problems = []
    http, dispatch = report["http"], report.get("dispatch")
    if http["server_errors_5xx"] or http["transport_errors"]:
        problems.append(
            f"{http['server_errors_5xx']} 5xx responses, transport errors {http['transport_errors']}"
        )
    for name in READ_ENDPOINTS:
        p99 = http["endpoints"].get(name, {}).get("p99_ms")
        if p99 is not None and p99 > args.read_p99_ms:
            problems.append(f"{name}: p99 {p99} ms > {args.read_p99_ms} ms")
    if dispatch and (
        dispatch["states"] != {"succeeded": args.jobs}
        or dispatch["attempts"] != {"1": args.jobs}
        or dispatch["lost"]
    ):
        problems.append(
            f"dispatch: states {dispatch['states']}, attempts {dispatch['attempts']}, lost {dispatch['lost']}"
        )
    print("\n".join(["GOALS MISSED:", *problems]) if problems else "all goals met")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
