"""Run every atheris harness for a bounded time (``make fuzz``); exit 1 when one finds a crash.

Each harness reads its seed corpus from ``tests/fuzz/corpus/<name>`` (never written to: new inputs go
to a temporary work folder) and writes what it finds to ``.cache/fuzz-findings/`` (crash-*, timeout-*,
oom-*). A finding becomes a regression test: copy the file into ``tests/fuzz/corpus/regressions/``,
where ``tests/fuzz/test_fuzz_regressions.py`` replays it, and fix the code.

    .venv/bin/python tests/fuzz/run_fuzzers.py --seconds 60
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = {"onnx_frontend": "onnx", "engine_loader": "engine"}  # harness -> its corpus folder


def run_harness(name: str, corpus: str, seconds: int, findings: Path) -> tuple[int, str]:
    """Run one harness; its exit status and the last lines of its output."""
    findings.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as work:
        command = [
            sys.executable, str(HERE / f"fuzz_{name}.py"), work, str(HERE / "corpus" / corpus),
            f"-max_total_time={seconds}", "-max_len=65536", "-timeout=30", "-rss_limit_mb=3072",
            f"-artifact_prefix={findings}/{name}-", "-print_final_stats=1",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 300)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith('"')]
    return result.returncode, "\n".join(lines[-12:])


def main() -> int:
    """Run the harnesses one after the other; report runs and findings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="time per harness")
    parser.add_argument("--findings", type=Path, default=Path(".cache/fuzz-findings"))
    parser.add_argument("harness", nargs="*", help=f"some of {', '.join(HARNESSES)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.harness) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harness(es) {sorted(unknown)}; known: {', '.join(HARNESSES)}")
    failed = []
    for name in args.harness or list(HARNESSES):
        started = time.monotonic()
        status, tail = run_harness(name, HARNESSES[name], args.seconds, args.findings)
        print(f"== {name}: exit {status} after {time.monotonic() - started:.0f} s\n{tail}\n", flush=True)
        if status != 0:
            failed.append(name)
    if failed:
        print(f"fuzzing found problems in: {', '.join(failed)}; inputs in {args.findings}/")
        return 1
    print("fuzzing found nothing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
