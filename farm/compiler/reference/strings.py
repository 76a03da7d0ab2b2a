"""String ops (opsets 10-20): StringConcat, StringSplit, StringNormalizer, RegexFullMatch.
Strings are numpy object arrays of python ``str``."""

from __future__ import annotations

import re

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def _strings(x: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else str(s), otypes=[object])(x) if x.size else x


@op("StringConcat")
def string_concat(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    a, b = np.broadcast_arrays(_strings(inputs[0]), _strings(inputs[1]))
    return np.array([x + y for x, y in zip(a.ravel(), b.ravel(), strict=True)], dtype=object).reshape(a.shape)


@op("RegexFullMatch")
def regex_full_match(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    pattern = re.compile(str(node.attr("pattern")))
    x = _strings(inputs[0])
    return np.array([pattern.fullmatch(s) is not None for s in x.ravel()], dtype=bool).reshape(x.shape)


@op("StringSplit")
def string_split(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    """Split each string (on ``delimiter``, or on runs of whitespace when it is empty), padding
    the parts with "" to the longest; also returns the number of parts of each."""
    x = _strings(inputs[0])
    delimiter = node.attr("delimiter", "") or None
    maxsplit = node.attr("maxsplit", None)
    parts = [s.split(delimiter, -1 if maxsplit is None else int(maxsplit)) for s in x.ravel()]
    width = max((len(p) for p in parts), default=0)
    padded = np.array([p + [""] * (width - len(p)) for p in parts], dtype=object).reshape(*x.shape, width)
    counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    return [padded, counts]


@op("StringNormalizer")
def string_normalizer(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    """Drop the elements that are stop words (case-insensitively unless is_case_sensitive), then
    change case; an all-removed input gives one empty string."""
    x = _strings(inputs[0])
    action = node.attr("case_change_action", "NONE")
    sensitive = bool(node.attr("is_case_sensitive", 0))
    stops = set(node.attr("stopwords", None) or [])
    if not sensitive:
        stops = {s.lower() for s in stops}
    kept = [s for s in x.ravel() if (s if sensitive else s.lower()) not in stops]
    if action == "LOWER":
        kept = [s.lower() for s in kept]
    elif action == "UPPER":
        kept = [s.upper() for s in kept]
    out = np.array(kept or [""], dtype=object)
    return out.reshape(1, -1) if x.ndim == 2 else out
