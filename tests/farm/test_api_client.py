"""The CLI client against a real HTTP server (the app in a thread): idempotent retries in CI,
clear errors with exit code 2, datasets checked before submitting, --timeout, JUnit and external data."""

from __future__ import annotations

import contextlib
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from flask import Flask
from onnx.external_data_helper import convert_model_to_external_data
from sqlalchemy import func, select
from werkzeug.serving import make_server

from farm.api.auth import issue_token
from farm.cli import main
from farm.client import FarmClient, FarmClientError
from farm.client.cli import write_junit
from farm.db import Job, JobKind, ModelVersion, Submission


@pytest.fixture
def server(app: Flask) -> Iterator[str]:
    """The app served over HTTP on a free port, in a thread."""
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(timeout=10)


@pytest.fixture
def token(app: Flask) -> str:
    return issue_token(app.extensions["farm"].db, "cli-tests", ["submit"])


@pytest.fixture
def model_file(tmp_path: Path, small_cnn) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "small_cnn.onnx"
    path.write_bytes(small_cnn.data)
    return path


def farm(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def count(app: Flask, table: type) -> int:
    with app.extensions["farm"].db.session() as session:
        query = select(func.count()).select_from(table)
        if table is Job:
            query = query.where(Job.kind == JobKind.BUILD)
        return int(session.execute(query).scalar_one())


def test_a_retried_ci_step_submits_once(app: Flask, server: str, token: str, model_file: Path) -> None:
    env = {"GITHUB_RUN_ID": "991", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "farm", "GITHUB_SHA": "c0ffee",
           "GITHUB_REF_NAME": "main", "GITHUB_REPOSITORY": "acme/models"}  # fmt: skip
    args = ["submit", str(model_file), "--server", server, "--token", token, "--profile", "cpu",
            "--precision", "fp32,int8", "--batch", "1,8"]  # fmt: skip
    first = farm(*args, env=env)
    again = farm(*args, env=env)
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert count(app, Submission) == 1 and count(app, Job) == 4
    with app.extensions["farm"].db.session() as session:
        version = session.execute(select(ModelVersion)).scalar_one()
        assert version.git_commit == "c0ffee" and version.branch == "main"
        assert version.ci_url == "https://github.com/acme/models/actions/runs/991"
    assert farm(*args, env=env | {"GITHUB_RUN_ID": "992"}).exit_code == 0
    assert count(app, Submission) == 2


def test_errors_are_exit_code_2_with_the_servers_message(server: str, token: str, model_file: Path) -> None:
    unknown = farm(
        "submit", str(model_file), "--server", server, "--token", token, "--profile", "cpu,nvidia-h300"
    )
    assert unknown.exit_code == 2 and "nvidia-h300" in unknown.output and "field: profiles" in unknown.output
    wrong = farm("submit", str(model_file), "--server", server, "--token", "farm_wrong", "--profile", "cpu")
    assert wrong.exit_code == 2 and "invalid token" in wrong.output
    missing = farm("results", "12345", "--server", server, "--token", token)
    assert missing.exit_code == 2 and "no submission 12345" in missing.output


def test_validation_data_is_checked_before_submitting(
    app: Flask, server: str, token: str, model_file: Path, tmp_path: Path
) -> None:
    val = tmp_path / "val.npz"
    np.savez(val, input=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    result = farm("submit", str(model_file), "--server", server, "--token", token, "--profile", "cpu",
                  "--val", str(val))  # fmt: skip
    assert result.exit_code == 2 and "axis 2 must be 16" in result.output
    assert count(app, Submission) == 0


def test_wait_timeout_is_exit_code_2(server: str, token: str, model_file: Path) -> None:
    # no worker runs in this test, so the jobs stay queued
    result = farm("submit", str(model_file), "--server", server, "--token", token, "--profile", "cpu",
                  "--wait", "--timeout", "1")  # fmt: skip
    assert result.exit_code == 2 and "did not finish within 1 s" in result.output
    assert "cpu fp32 batch 1: queued" in result.output  # progress as log lines when not on a terminal


def test_client_zips_external_data(app: Flask, server: str, token: str, small_cnn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(small_cnn.data)
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save_model(model, str(folder / "cnn.onnx"))
    uploaded = FarmClient(server, token).upload_model(folder / "cnn.onnx", name="cnn-ext")
    assert uploaded["created"] and uploaded["model_version"]["model"] == "cnn-ext"


def test_junit_report_is_valid_and_counts_outcomes(tmp_path: Path) -> None:
    rows = [
        {"job_id": 1, "profile": "cpu", "precision": "fp32", "batch_size": 1, "state": "succeeded", "error": None,
         "median_ms": 1.0, "p99_ms": 2.0, "change_pct": 1.0, "worst_cosine": 1.0, "verdict": "unchanged"},
        {"job_id": 2, "profile": "cpu", "precision": "int8", "batch_size": 1, "state": "succeeded", "error": None,
         "median_ms": 1.5, "p99_ms": 2.5, "change_pct": 50.0, "worst_cosine": 0.999, "verdict": "regressed"},
        {"job_id": 3, "profile": "nvidia-h200", "precision": "fp16", "batch_size": 8, "state": "failed",
         "error": "build failed: <op> & \"quotes\"", "median_ms": None, "p99_ms": None, "change_pct": None,
         "worst_cosine": None, "verdict": "failed"},
    ]  # fmt: skip
    results = {"submission_id": 7, "model": "resnet", "model_version": {"label": "v2"}, "rows": rows}
    path = tmp_path / "report.xml"
    write_junit(results, path)
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["fp32-batch1", "int8-batch1", "fp16-batch8"]
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    assert cases[1].find("failure").get("type") == "regression"  # type: ignore[union-attr]
    assert '<op> & "quotes"' in cases[2].find("error").text  # type: ignore[union-attr,operator]


class DroppingProxy:
    """A TCP proxy in front of ``upstream`` that closes its first ``drops`` connections as soon as
    a request arrives, without answering: what a client sees when it sends on a keep-alive
    connection the server has just closed."""

    def __init__(self, upstream: str, drops: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drops = drops
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.drops:
                client.recv(65536)
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def test_an_upload_on_a_dropped_connection_is_retried_a_submission_is_not(
    app: Flask, server: str, token: str, model_file: Path
) -> None:
    proxy = DroppingProxy(server, drops=1)
    try:
        FarmClient(proxy.url, token=token).upload_model(model_file, name="dropped-once")
        assert proxy.connections == 2  # sent again, on a new connection
        assert count(app, ModelVersion) == 1
    finally:
        proxy.close()
    proxy = DroppingProxy(server, drops=1)
    try:
        with pytest.raises(FarmClientError, match="cannot reach the farm"):
            FarmClient(proxy.url, token=token).submit("dropped-once", profiles=["cpu"])
        assert proxy.connections == 1 and count(app, Submission) == 0  # never sent twice
    finally:
        proxy.close()
    proxy = DroppingProxy(server, drops=1)
    try:  # with an idempotency key the server dedupes, so the client may send it again
        FarmClient(proxy.url, token=token).submit(
            "dropped-once", profiles=["cpu"], idempotency_key="ci-run-7"
        )
        assert proxy.connections == 2 and count(app, Submission) == 1
    finally:
        proxy.close()
