"""ONNX backend node tests of LSTM, GRU, RNN, If, Loop and Scan (and every other generated case
that contains one of them, e.g. Range's expanded Loop form) built as engines and run.

Built at tuning level 0 (priorities decide), so the engine runs OUR recurrent / control-flow
tactic, never the reference fallback, and its outputs are checked against ONNX's expected ones.
A few cases are also built at level 1, where the tuner validates every candidate against the
reference: none of ours may be rejected.
"""

from __future__ import annotations

import pytest
from recurrent_engine_cases import (
    CONTROL_FLOW_OPS,
    NON_TENSOR,
    NOT_RUN,
    RECURRENT_OPS,
    checked_case_engine,
    engine_cases,
    op_types,
)
from recurrent_engine_cases import run_case_on_engine as run_on_engine

CASES = engine_cases()
DEDICATED = {
    "LSTM": "cpu.recurrent.", "GRU": "cpu.recurrent.", "RNN": "cpu.recurrent.",
    "If": "cpu.control_flow.if", "Loop": "cpu.control_flow.loop", "Scan": "cpu.control_flow.scan",
}  # fmt: skip


def test_every_case_of_these_ops_is_run_or_listed() -> None:
    names = {c.name for c in CASES}
    assert {"test_lstm_defaults", "test_gru_defaults", "test_simple_rnn_defaults", "test_if", "test_loop11",
            "test_scan9_sum"} <= names  # fmt: skip
    assert set(NOT_RUN) <= names
    assert all(reason for reason in {**NOT_RUN, **NON_TENSOR}.values())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node_case_through_engine(case) -> None:  # type: ignore[no-untyped-def]
    if case.name in NOT_RUN:
        pytest.skip(NOT_RUN[case.name])
    engine = checked_case_engine(case, tuning_level=0)
    inlined = any(p["name"] == "if_inlining" and p["changed"] for p in engine.report["passes"]["passes"])
    tactics = {k.node.name: k.tactic.name for k in engine.kernels}
    chosen = " ".join(tactics.values())
    for op in op_types(case) & (RECURRENT_OPS | CONTROL_FLOW_OPS):
        if op == "If" and DEDICATED[op] not in chosen:
            # every If of the case had a condition known at build time: inlined, not run
            assert inlined, f"If neither run nor inlined: chose {sorted(set(tactics.values()))}"
            continue
        assert DEDICATED[op] in chosen, f"{op}: chose {sorted(set(tactics.values()))}"


TUNED = ["test_lstm_bidirectional", "test_gru_seq_length", "test_simple_rnn_batchwise", "test_if", "test_loop11",
         "test_scan9_multi_state"]  # fmt: skip


@pytest.mark.parametrize("name", TUNED)
def test_tuner_accepts_our_tactics(name: str) -> None:
    (case,) = [c for c in CASES if c.name == name]
    rejected = run_on_engine(case, tuning_level=1, report_key="rejected")
    assert not [r for r in rejected if "recurrent" in r["tactic"] or "control_flow" in r["tactic"]], rejected
