"""Arithmetic on symbolic dims."""

from __future__ import annotations

from farm.compiler.frontend.symbolic import (
    broadcast_shapes,
    dim_add,
    dim_divide,
    dim_floordiv,
    dim_product,
    dim_sub,
)


def test_products_and_exact_division() -> None:
    assert dim_product(["batch", "seq", 4]) == "4*batch*seq"
    assert dim_divide("4*batch*seq", 2) == "2*batch*seq"
    assert dim_divide(dim_product(["batch", "seq", 768]), 768) == "batch*seq"
    assert dim_divide("batch", "seq") is None
    assert dim_product([3, 0, "batch"]) == 0


def test_offsets_combine() -> None:
    assert dim_add(dim_sub("w", 2), 2) == "w"
    assert dim_add("(w-2)", 5) == "(w+3)"
    assert dim_add("seq", "seq") == "(seq+seq)"
    assert dim_floordiv("(w-1)", 2) == "((w-1)//2)"
    assert dim_floordiv("2*n", 2) == "n"
    assert dim_sub("n", "n") == 0


def test_broadcasting_with_symbols() -> None:
    assert broadcast_shapes(("batch", 1, 8), (4, 8)) == ("batch", 4, 8)
    assert broadcast_shapes(("batch", 1), (1, "seq")) == ("batch", "seq")
    assert broadcast_shapes((1,), ("n",)) == ("n",)
