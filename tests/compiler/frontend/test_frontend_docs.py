"""docs/OPS.md lists exactly the ops the code supports (its table is generated)."""

from __future__ import annotations

from pathlib import Path

from farm.compiler.frontend.op_table import function_table, markdown_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "OPS.md"


def test_ops_doc_contains_the_current_op_table() -> None:
    assert markdown_table() in DOC.read_text(), (
        "docs/OPS.md is stale: paste the output of `.venv/bin/python -m farm.compiler.frontend.op_table`"
    )


def test_ops_doc_states_the_current_op_count() -> None:
    rows = markdown_table().count("\n") - 2
    assert f"**{rows} ONNX op types**" in DOC.read_text()


def test_ops_doc_contains_the_current_function_op_table() -> None:
    assert function_table() in DOC.read_text(), (
        "docs/OPS.md is stale: paste the output of `.venv/bin/python -m farm.compiler.frontend.op_table`"
    )
