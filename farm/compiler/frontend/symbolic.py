"""Arithmetic on dimensions that may be symbolic (``"batch"``) or products of symbols
(``"batch*seq"``). Symbolic results are strings, so they stay valid ``Dim`` values."""

from __future__ import annotations

from collections import Counter

from farm.compiler.ir.graph import Dim


def factors(dim: Dim) -> tuple[int, Counter[str]]:
    """Split a dimension into its integer factor and a multiset of symbolic factors."""
    if isinstance(dim, int):
        return dim, Counter()
    number = 1
    symbols: Counter[str] = Counter()
    for part in _top_level_factors(dim):
        if part.isdigit():
            number *= int(part)
        else:
            symbols[part] += 1
    return number, symbols


def _top_level_factors(dim: str) -> list[str]:
    """Split ``"4*batch*(w-1)"`` at the ``*`` outside parentheses; a top-level + or - (not
    possible in what we build, but in user-given names) keeps the whole string one factor."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(dim):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and ch in "+-/":
            return [dim]
        elif depth == 0 and ch == "*":
            parts.append(dim[start:i])
            start = i + 1
    parts.append(dim[start:])
    return parts


def make_dim(number: int, symbols: Counter[str]) -> Dim:
    """Rebuild a dimension from an integer factor and symbolic factors."""
    names = sorted(symbols.elements())
    if not names:
        return number
    parts = ([str(number)] if number != 1 else []) + names
    return "*".join(parts)


def dim_product(dims: list[Dim] | tuple[Dim, ...]) -> Dim:
    """The product of several dims, kept symbolic where needed."""
    number = 1
    symbols: Counter[str] = Counter()
    for d in dims:
        n, s = factors(d)
        number *= n
        symbols += s
    if number == 0:
        return 0
    return make_dim(number, symbols)


def dim_divide(numerator: Dim, denominator: Dim) -> Dim | None:
    """numerator / denominator when it divides exactly (symbolically), else None."""
    n_num, n_sym = factors(numerator)
    d_num, d_sym = factors(denominator)
    if d_num == 0 or n_num % d_num or any(n_sym[k] < v for k, v in d_sym.items()):
        return None
    return make_dim(n_num // d_num, n_sym - d_sym)


def _split_offset(dim: str) -> tuple[str, int]:
    """``"(x+3)"`` -> ("x", 3), ``"(x-2)"`` -> ("x", -2); anything else -> (dim, 0)."""
    if dim.startswith("(") and dim.endswith(")"):
        depth = 0
        for i, ch in enumerate(dim):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(dim) - 1:
                return dim, 0  # the outer parentheses do not wrap the whole expression
        inner = dim[1:-1]
        cut = max(inner.rfind("+"), inner.rfind("-"))
        tail = inner[cut + 1 :]
        head = inner[:cut]
        if cut > 0 and tail.isdigit() and head.count("(") == head.count(")"):
            return head, int(tail) if inner[cut] == "+" else -int(tail)
    return dim, 0


def dim_add(a: Dim, b: Dim) -> Dim:
    """a + b, symbolic as ``(a+b)`` when not both integers; integer offsets are combined, so
    ``(x-2)`` + 2 is ``x``."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, int):
        a, b = b, a
    if b == 0:
        return a
    if isinstance(b, int):
        base, offset = _split_offset(str(a))
        offset += b
        if offset == 0:
            return base
        return f"({base}+{offset})" if offset > 0 else f"({base}-{-offset})"
    return f"({a}+{b})"


def dim_sub(a: Dim, b: Dim) -> Dim:
    """a - b, symbolic as ``(a-b)`` when not both integers."""
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if b == 0:
        return a
    if a == b:
        return 0
    return f"({a}-{b})"


def dim_floordiv(a: Dim, b: int) -> Dim:
    """a // b, symbolic as ``(a//b)``, exact when the division is exact symbolically."""
    if isinstance(a, int):
        return a // b
    if b == 1:
        return a
    exact = dim_divide(a, b)
    return exact if exact is not None else f"({a}//{b})"


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    """The broadcast of two dims (1 stretches; an integer beats a symbol other than 1)."""
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and not isinstance(b, int):
        return a
    if isinstance(b, int) and not isinstance(a, int):
        return b
    if isinstance(a, int) and isinstance(b, int):
        raise ValueError(f"dimensions {a} and {b} do not broadcast")
    return a


def broadcast_shapes(*shapes: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """numpy broadcasting of shapes with symbolic dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dims(x, y) for x, y in zip(out, padded, strict=True)]
    return tuple(out)
