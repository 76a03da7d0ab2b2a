"""measure_interleaved: runners alternate (run by run, or in turns of ``block_ms`` whose first run
is dropped), each gets at least ``iterations`` samples, and the order alternates between rounds."""

from __future__ import annotations

import time

from farm.compiler.engine.benchmark import measure_interleaved


def test_run_by_run_alternates_and_counts_every_run() -> None:
    calls: list[str] = []
    stats = measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        warmup_ms=0,
        duration_s=0,
        iterations=6,
    )
    assert len(stats["a"].samples_ms) == len(stats["b"].samples_ms) == 6
    timed = calls[-12:]
    assert timed == ["a", "b", "b", "a"] * 3  # A B B A ...: neither always goes first


def test_blocks_run_each_runner_in_turns_and_drop_each_turns_first_run() -> None:
    calls: list[str] = []

    def runner(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    stats = measure_interleaved(
        {"a": runner("a", 0.002), "b": runner("b", 0.001)},
        warmup_ms=0,
        duration_s=0,
        iterations=4,
        block_ms=20,
    )
    timed_calls = calls[2:]  # each runner's untimed first call comes before the (empty) warm-up
    groups: list[list[str]] = []
    for name in timed_calls:
        if groups and groups[-1][0] == name:
            groups[-1].append(name)
        else:
            groups.append([name])
    assert groups[0][0] == "a" and all(len(g) >= 2 for g in groups)  # turns: a dropped run + a block
    turns = {name: timed_calls.count(name) - len(stats[name].samples_ms) for name in ("a", "b")}
    assert turns["a"] == turns["b"] >= 1  # exactly one dropped run per turn, one turn each per round
    assert len(stats["a"].samples_ms) >= 4 and len(stats["b"].samples_ms) >= 4
    assert min(stats["a"].samples_ms) >= 2.0 and min(stats["b"].samples_ms) >= 1.0
