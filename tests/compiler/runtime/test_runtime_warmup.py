"""``farm warmup`` and :func:`farm.compiler.warmup.warm_up`: throwaway builds that leave the kernels
in numba's on-disk cache, a report of what was compiled or loaded, and failures recorded, not raised."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from farm.cli import main as farm_main
from farm.compiler.warmup import warm_up
from farm.services import _warm_up


def test_warmup_cli_builds_and_reports_the_kernels_numba_compiled_or_loaded() -> None:
    # a fresh process: kernels compiled earlier in this one would count as neither compiled nor loaded
    result = subprocess.run(
        [sys.executable, "-m", "farm.cli", "warmup", "--models", "mlp", "--precisions", "fp32"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Kernel warm-up" in result.stdout
    row = next(line for line in result.stdout.splitlines() if " mlp " in line)
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert cells[:2] == ["mlp", "fp32"] and cells[-1] == "ok"
    compiled, loaded = int(cells[3]), int(cells[4])
    assert compiled + loaded > 0  # the build called numba kernels, from the cache or compiled now
    assert f"{compiled} kernel signatures compiled, {loaded} loaded" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "mlp,no-such-model"], "unknown zoo model(s) ['no-such-model']"),
        (["--models", " , "], "unknown zoo model(s)"),
        (["--precisions", "fp32,int4"], "unknown precision(s) ['int4']"),
    ],
)
def test_warmup_cli_rejects_unknown_models_and_precisions(args: list[str], message: str) -> None:
    result = CliRunner().invoke(farm_main, ["warmup", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_failing_build_is_recorded_and_the_warmup_goes_on() -> None:
    done: list[str] = []
    report = warm_up(
        ["mlp"],
        ["fp32", "fp16"],
        profile="no-such-profile",
        on_done=lambda step: done.append(f"{step.model}/{step.precision}"),
    )
    assert done == ["mlp/fp32", "mlp/fp16"]
    assert [s.precision for s in report.failed] == ["fp32", "fp16"]
    assert all("no-such-profile" in (s.error or "") for s in report.steps)


def test_warm_up_rejects_unknown_models() -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        warm_up(["mlp", "nope"])


def test_worker_warm_up_reports_failures_and_returns(capsys: pytest.CaptureFixture[str]) -> None:
    _warm_up(["no-such-profile"])
    err = capsys.readouterr().err
    assert "warming up the no-such-profile kernels" in err
    assert "FAILED" in err
    assert "build(s) failed" in err
