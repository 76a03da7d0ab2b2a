"""ONNX's backend node tests through load_onnx + reference.run (see onnx_node_cases.py).

Applicable cases must pass, except those listed with a reason in expected_failures.json (strict:
a listed case that starts passing fails, so the list stays true)."""

from __future__ import annotations

import pytest
from onnx_node_cases import Case, collect_cases, load_expected_failures, run_case

CASES = collect_cases()
EXPECTED_FAILURES = load_expected_failures()
APPLICABLE = [c for c in CASES if c.opset is not None]


def _param(case: Case) -> object:
    marks = []
    if case.name in EXPECTED_FAILURES:
        marks.append(pytest.mark.xfail(reason=EXPECTED_FAILURES[case.name], strict=True))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in APPLICABLE])
def test_onnx_node_case(case: Case) -> None:
    run_case(case)


def test_expected_failures_name_real_applicable_cases() -> None:
    names = {c.name for c in APPLICABLE}
    stale = sorted(set(EXPECTED_FAILURES) - names)
    assert not stale, f"expected_failures.json lists cases that are not applicable or do not exist: {stale}"
    assert all(reason.strip() for reason in EXPECTED_FAILURES.values())


def test_most_generated_cases_are_applicable() -> None:
    """Guards against a regression that silently makes cases inapplicable (e.g. an op dropped
    from the supported list): at least 1600 of onnx 1.23's cases run."""
    assert len(APPLICABLE) >= 1600, len(APPLICABLE)
