""".ci/services.sh starts a Redis that is not running and says so; under CI a service it cannot start fails the run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / ".ci" / "services.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_script(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="the script writes Redis' folders under /var; needs root")
def test_redis_that_is_down_is_started_and_reported() -> None:
    port = free_port()
    result = run_script(CI_REDIS_PORT=str(port), CI="true")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"starting Redis (redis-server --daemonize yes --port {port})" in result.stdout
        assert "Redis started" in result.stdout
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"PING\r\n")
            assert connection.recv(16).startswith(b"+PONG")
        again = run_script(CI_REDIS_PORT=str(port))
        assert f"Redis already answers on 127.0.0.1:{port}" in again.stdout
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=30)


def test_unreachable_postgres_fails_under_ci_and_warns_otherwise(tmp_path: Path) -> None:
    # a port where nothing listens, and no way to start a server there: pg_ctlcluster starts the
    # installed cluster on its own port, so the script must notice the port still does not answer
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("pg_ctlcluster", "sudo", "apt-get"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    path = f"{fake_bin}:{os.environ['PATH']}"
    port = str(free_port())
    in_ci = run_script(CI_PG_PORT=port, CI="true", PATH=path)
    assert in_ci.returncode == 1
    assert "ERROR: could not start: PostgreSQL" in in_ci.stdout
    local = run_script(CI_PG_PORT=port, CI="", PATH=path)
    assert local.returncode == 0
    assert "WARNING: could not start: PostgreSQL" in local.stdout
