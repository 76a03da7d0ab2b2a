"""A scaled-down run of ``make loadtest`` (4 clients for 5 s, 20 dispatch jobs over 2 workers):
the deployment under load answers without a 5xx and every job finishes exactly once. Latency goals
are not asserted here (timings on a shared machine are noise); ``make loadtest`` measures them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]


def test_loadtest_smoke(tmp_path: Path) -> None:
    out = tmp_path / "loadtest.json"
    command = [sys.executable, str(REPO / "loadtest" / "run.py"), "--clients", "4", "--seconds", "5", "--jobs", "20",
               "--workers", "2", "--api-workers", "2", "--read-p99-ms", "1e9", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["http"]["server_errors_5xx"] == 0 and report["http"]["requests"] > 0
    assert report["dispatch"]["states"] == {"succeeded": 20}
    assert report["dispatch"]["attempts"] == {"1": 20} and report["dispatch"]["lost"] == 0
