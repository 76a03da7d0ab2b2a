"""Sensible random inputs for zoo models, generated from their :class:`InputSpec`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from farm.zoo.spec import InputSpec


def resolve_shape(spec: InputSpec, dims: Mapping[str, int]) -> tuple[int, ...]:
    """The concrete shape of ``spec`` with every symbolic dim looked up in ``dims``."""
    shape = []
    for dim in spec.shape:
        if isinstance(dim, str):
            if dim not in dims:
                raise ValueError(f"input {spec.name!r} needs a value for dimension {dim!r}")
            shape.append(int(dims[dim]))
        else:
            shape.append(dim)
    return tuple(shape)


def make_input(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One input of the spec's kind.

    image/float: N(0, 1); token_ids: uniform in [1, high) (0 is the padding id); mask: ones
    with a random run of padding zeros (at most half the row) at the end of each row;
    segment_ids: 0 then 1 from a random split point; state: uniform in [-1, 1].
    """
    dtype = np.dtype(spec.dtype)
    if spec.kind in ("image", "float"):
        return rng.standard_normal(shape).astype(dtype)
    if spec.kind == "token_ids":
        assert spec.high is not None
        return rng.integers(1, spec.high, size=shape).astype(dtype)
    if spec.kind == "mask":
        return _padding_mask(shape, rng).astype(dtype)
    if spec.kind == "state":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if spec.kind == "segment_ids":
        return _segment_ids(shape, rng).astype(dtype)
    raise ValueError(f"input {spec.name!r}: unknown kind {spec.kind!r}")


def _padding_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    mask = np.ones(shape, dtype=np.int64)
    if len(shape) != 2:
        return mask
    rows, length = shape
    for row in range(rows):
        # every row keeps at least half its tokens; the rest is padding
        real = int(rng.integers((length + 1) // 2, length + 1))
        mask[row, real:] = 0
    return mask


def _segment_ids(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    segments = np.zeros(shape, dtype=np.int64)
    if len(shape) != 2 or shape[1] < 2:
        return segments
    rows, length = shape
    for row in range(rows):
        segments[row, int(rng.integers(1, length)) :] = 1
    return segments


def make_inputs(specs: list[InputSpec], dims: Mapping[str, int], seed: int) -> dict[str, np.ndarray]:
    """Inputs for every spec, from one seeded generator (same seed, same arrays)."""
    rng = np.random.default_rng(seed)
    return {spec.name: make_input(spec, resolve_shape(spec, dims), rng) for spec in specs}
