"""The ``_simd16`` vector intrinsics the depthwise-rows tactic is built on, lane by lane against
numpy: masked loads and stores at every count (including 0 and past 16), lane-range loads whose
window starts before the array and ends past it, the even/odd de-interleave, and the lane-wise
arithmetic (max/min keep numba's scalar semantics, in both of their code generations, and a
maximum kept in memory compiles to plain stores on AVX2 hosts). The masked forms are checked in both of their
code generations, the pure masked one (AVX-512 hosts) and the one that moves whole vectors with
plain loads and stores (:data:`~._simd16.PLAIN_WHOLE_VECTORS`, AVX2 hosts), whichever host runs
the tests."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import MASKED_STORE, machine_code
from numba import njit

from farm.compiler.kernels.cpu import _simd16
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    max_into,
    vadd16,
    vevens16,
    vload16,
    vload16_lanes,
    vload16_masked,
    vmax16,
    vmin16,
    vmul16,
    vodds16,
    vprefetch,
    vprefetch_l2,
    vsplat16,
    vstore16,
    vstore16_lanes,
    vstore16_masked,
    vtranspose8x16,
)


def _masked_copy(src, at, dst, to, count):
    vstore16_masked(dst, to, vload16_masked(src, at, count), count)


def _lanes(src, base, lo, hi, out):
    vstore16(out, 0, vload16_lanes(src, base, lo, hi))


@pytest.fixture(params=[False, True], ids=["masked", "plain-whole"])
def compiled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``_masked_copy`` and ``_lanes`` freshly compiled under one ``PLAIN_WHOLE_VECTORS`` setting
    (the intrinsics read it when their caller compiles)."""
    monkeypatch.setattr(_simd16, "PLAIN_WHOLE_VECTORS", request.param)
    return {"copy": njit(cache=False)(_masked_copy), "lanes": njit(cache=False)(_lanes)}


@njit(cache=False)
def _split(src, out):
    a = vload16(src, 0)
    b = vload16(src, LANES)
    vstore16(out, 0, vevens16(a, b))
    vstore16(out, LANES, vodds16(a, b))


@njit(cache=False)
def _arith(a, b, s, out):
    x = vload16(a, 0)
    y = vload16(b, 0)
    vstore16(out, 0, vadd16(x, y))
    vstore16(out, 16, vmul16(x, y))
    vstore16(out, 32, vmax16(x, y))
    vstore16(out, 48, vmin16(x, y))
    vstore16(out, 64, vsplat16(s))


@pytest.mark.parametrize("count", [*range(18), 40])
def test_masked_load_and_store_touch_only_the_first_count_lanes(
    rng: np.random.Generator, compiled: dict, count: int
) -> None:
    """Every count: without AVX-512 a partial store is built from 8-, 4-, 2- and 1-lane pieces,
    one per set bit of the count, each at its own offset."""
    src = rng.standard_normal(64).astype(np.float32)
    dst = np.full(64, -7.0, np.float32)
    compiled["copy"](src, 5, dst, 9, count)
    n = min(count, LANES)
    want = np.full(64, -7.0, np.float32)
    want[9 : 9 + n] = src[5 : 5 + n]
    np.testing.assert_array_equal(dst, want)


def test_masked_load_at_the_end_of_an_array_reads_nothing_past_it(
    rng: np.random.Generator, compiled: dict
) -> None:
    """Three floats left in the array: a 16-lane masked load of three must not fault or read on."""
    src = rng.standard_normal(3).astype(np.float32)
    dst = np.zeros(16, np.float32)
    compiled["copy"](src, 0, dst, 0, 3)
    np.testing.assert_array_equal(dst[:3], src)
    assert not dst[3:].any()


@pytest.mark.parametrize(
    ("base", "lo", "hi"),
    [(-3, 3, 16), (0, 0, 16), (4, 0, 6), (-2, 2, 9), (8, 0, 100), (0, 5, 5), (0, -4, 16), (2, -9, 20)],
)
def test_lane_range_load_zeroes_the_lanes_outside(
    rng: np.random.Generator, compiled: dict, base: int, lo: int, hi: int
) -> None:
    """Lanes lo <= j < min(hi, 16) hold src[base + j]; the window may start before the array (a
    row's left padding), as long as the selected lanes are inside it."""
    src = rng.standard_normal(10 + max(base, 0) + 16).astype(np.float32)
    if hi > 16:
        src = src[: base + 16]  # lanes past the end selected by hi clamp to the 16 there are
    out = np.full(16, np.nan, np.float32)
    compiled["lanes"](src, base, lo, hi, out)
    want = np.zeros(16, np.float32)
    for j in range(max(lo, 0), min(hi, 16)):
        want[j] = src[base + j]
    np.testing.assert_array_equal(out, want)


def test_evens_and_odds_deinterleave_32_floats(rng: np.random.Generator) -> None:
    src = rng.standard_normal(32).astype(np.float32)
    out = np.empty(32, np.float32)
    _split(src, out)
    np.testing.assert_array_equal(out[:16], src[0::2])
    np.testing.assert_array_equal(out[16:], src[1::2])


def test_lane_arithmetic_matches_numpy(rng: np.random.Generator) -> None:
    a = rng.standard_normal(16).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    a[3] = b[3]  # a tie
    out = np.empty(80, np.float32)
    _arith(a, b, 2.5, out)
    np.testing.assert_array_equal(out[:16], a + b)
    np.testing.assert_array_equal(out[16:32], a * b)
    np.testing.assert_array_equal(out[32:48], np.maximum(a, b))
    np.testing.assert_array_equal(out[48:64], np.minimum(a, b))
    np.testing.assert_array_equal(out[64:], np.full(16, 2.5, np.float32))


@njit(cache=False)
def _transpose(src, out):
    t = vtranspose8x16(
        vload16(src, 0), vload16(src, 16), vload16(src, 32), vload16(src, 48),
        vload16(src, 64), vload16(src, 80), vload16(src, 96), vload16(src, 112),
    )  # fmt: skip
    for i in range(8):
        vstore16(out, 16 * i, t[i])


def test_transpose_8x16_gives_each_vector_two_columns(rng: np.random.Generator) -> None:
    """Vector i of the result: column i of the 8 rows in lanes 0-7, column i + 8 in lanes 8-15."""
    src = rng.standard_normal(128).astype(np.float32)
    out = np.empty(128, np.float32)
    _transpose(src, out)
    rows = src.reshape(8, 16)
    want = np.stack([np.concatenate([rows[:, i], rows[:, i + 8]]) for i in range(8)])
    np.testing.assert_array_equal(out.reshape(8, 16), want)


@njit(cache=False)
def _store_lanes(src, dst, at, lo, hi):
    vstore16_lanes(dst, at, vload16(src, 0), lo, hi)


@pytest.mark.parametrize(("at", "lo", "hi"), [(-8, 8, 15), (3, 0, 16), (0, 2, 5), (-8, 8, 8), (-2, 2, 16)])
def test_lane_range_store_touches_only_the_selected_lanes(
    rng: np.random.Generator, at: int, lo: int, hi: int
) -> None:
    """Lanes lo <= j < hi land at dst[at + j]; the window may start before the array."""
    src = rng.standard_normal(16).astype(np.float32)
    dst = np.full(24, -7.0, np.float32)
    _store_lanes(src, dst, at, lo, hi)
    want = np.full(24, -7.0, np.float32)
    for j in range(lo, hi):
        want[at + j] = src[j]
    np.testing.assert_array_equal(dst, want)


def _max_min(a, b, out):
    x = vload16(a, 0)
    y = vload16(b, 0)
    vstore16(out, 0, vmax16(x, y))
    vstore16(out, 16, vmin16(x, y))


@pytest.fixture(params=[False, True], ids=["select", "vmaxps-halves"])
def max_min(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> object:
    """``_max_min`` freshly compiled with ``vmax16``/``vmin16`` as a compare and select, or as
    ``vmaxps``/``vminps`` on two halves (:data:`~._simd16.HALVES_MAX_MIN`, AVX2 hosts)."""
    if request.param and not _simd16.host_has("avx"):
        pytest.skip("this CPU has no AVX")
    monkeypatch.setattr(_simd16, "HALVES_MAX_MIN", request.param)
    return njit(cache=False)(_max_min)


def test_max_and_min_keep_the_select_rule_for_nan_and_signed_zeros(max_min: object) -> None:
    """``vmax16(a, b)`` is ``a if a > b else b``: a NaN on either side gives ``b``, and of two
    zeros the second; ``vmin16`` the same with ``<``."""
    nan, inf = np.nan, np.inf
    a = np.array(
        [nan, 1.0, nan, -0.0, 0.0, inf, -inf, 2.0, -3.0, 5.0, nan, 0.5, -1.0, 7.0, -inf, 1e-30], np.float32
    )
    b = np.array(
        [1.0, nan, nan, 0.0, -0.0, 1.0, 2.0, -inf, -3.0, 4.0, -2.0, 0.25, nan, 8.0, inf, -1e-30], np.float32
    )
    out = np.full(32, 99.0, np.float32)
    max_min(a, b, out)  # type: ignore[operator]
    for got, want in ((out[:16], np.where(a > b, a, b)), (out[16:], np.where(a < b, a, b))):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 40])
def test_max_into_keeps_a_running_maximum_and_stops_at_its_end(rng: np.random.Generator, n: int) -> None:
    buf = rng.standard_normal(n + 16).astype(np.float32)
    buf[0] = np.nan  # a NaN already held stays
    src = rng.standard_normal(n).astype(np.float32)
    src[n // 2] = np.nan  # an arriving NaN does not replace
    want = np.where(src > buf[:n], src, buf[:n])
    tail = buf[n:].copy()
    njit(cache=False)(lambda d, s: max_into(d, s))(buf[:n], src)
    np.testing.assert_array_equal(buf[:n], want)
    np.testing.assert_array_equal(buf[n:], tail)


def _running_max(acc, rows):
    for r in range(rows.shape[0]):
        row = rows[r]
        for q in range(0, acc.shape[0], LANES):
            vstore16(acc, q, vmax16(vload16(row, q), vload16(acc, q)))


def _running_max_into(acc, rows):
    for r in range(rows.shape[0]):
        max_into(acc, rows[r])


@pytest.mark.skipif(
    not _simd16.HALVES_MAX_MIN, reason="LLVM makes masked stores of selects on AVX hosts without AVX-512"
)
def test_a_maximum_kept_in_memory_compiles_to_plain_stores(rng: np.random.Generator) -> None:
    """``store(p, max(load(p), x))`` as a compare and select is rewritten by LLVM into a masked
    store of ``x``: ``vmaskmovps``, which AMD runs microcoded (a MaxPool pass 7x slower)."""
    acc = rng.standard_normal(64).astype(np.float32)
    rows = rng.standard_normal((3, 64)).astype(np.float32)
    assert not MASKED_STORE.findall(machine_code(_running_max, acc, rows))
    assert not MASKED_STORE.findall(machine_code(_running_max_into, acc, rows))


def _sum_with_prefetch(a, ahead):
    total = 0.0
    for i in range(a.size):
        vprefetch(a, i + ahead)
        vprefetch_l2(a, i + ahead)
        total += a[i]
    return total


def test_prefetch_is_a_hint_past_the_array_and_compiles_to_prefetch_instructions(
    rng: np.random.Generator,
) -> None:
    """``vprefetch``/``vprefetch_l2`` ask for lines far past the array's end (a tile's last
    step prefetches the columns of a tile that does not exist): no fault, nothing changes, and
    the machine code holds ``prefetcht0`` and ``prefetcht1``."""
    a = rng.standard_normal(64 * LANES).astype(np.float32)
    before = a.copy()
    got = njit(cache=False)(_sum_with_prefetch)(a, 1 << 24)
    np.testing.assert_allclose(got, float(a.astype(np.float64).sum()), rtol=1e-4)
    np.testing.assert_array_equal(a, before)
    asm = machine_code(_sum_with_prefetch, a, 1 << 24)
    assert "prefetcht0" in asm and "prefetcht1" in asm
