"""Attention tactics against a float64 split-heads / softmax / merge-heads oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close

TACTICS = ["cpu.attention.fused", "cpu.attention.tiles", "cpu.attention.blas"]


def attention_oracle(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, heads: int, scale: float
) -> np.ndarray:
    """fused.py's Attention, literally: split heads, softmax(scale q k^T + mask), merge heads."""

    def split(x: np.ndarray) -> np.ndarray:
        b, s, hd = x.shape
        return x.astype(np.float64).reshape(b, s, heads, hd // heads).transpose(0, 2, 1, 3)

    logits = scale * split(q) @ split(k).transpose(0, 1, 3, 2)
    if mask is not None:
        logits = logits + mask
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    y = p @ split(v)
    return y.transpose(0, 2, 1, 3).reshape(q.shape)


MASK_SHAPES = [None, "b11k", "bhqk", "1qk", "k"]


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize(
    ("batch", "sq", "sk", "heads", "d", "mask_kind"),
    [
        (1, 7, 7, 2, 8, None),
        (3, 5, 9, 4, 16, "b11k"),
        (2, 11, 6, 3, 5, "bhqk"),
        (1, 16, 16, 1, 32, "1qk"),
        (3, 4, 13, 2, 4, "k"),
        (2, 64, 64, 4, 32, "b11k"),  # large enough for the parallel path
        (1, 197, 197, 3, 24, "bhqk"),  # several query blocks and a short last one
        (2, 130, 70, 1, 40, "1qk"),  # one head: the blocks shrink so both threads get work
    ],
)
def test_attention_matches_oracle(
    rng: np.random.Generator,
    tactic: str,
    batch: int,
    sq: int,
    sk: int,
    heads: int,
    d: int,
    mask_kind: str | None,
) -> None:
    q = rng.standard_normal((batch, sq, heads * d)).astype(np.float32)
    k = rng.standard_normal((batch, sk, heads * d)).astype(np.float32)
    v = rng.standard_normal((batch, sk, heads * d)).astype(np.float32)
    mask_shape = {
        None: None,
        "b11k": (batch, 1, 1, sk),
        "bhqk": (batch, heads, sq, sk),
        "1qk": (1, sq, sk),
        "k": (sk,),
    }[mask_kind]
    mask = None
    if mask_shape is not None:  # BERT-style: 0 where attended, a large negative where masked
        mask = np.where(rng.random(mask_shape) < 0.25, -10000.0, 0.0).astype(np.float32)
        mask += rng.standard_normal(mask_shape).astype(np.float32)
    scale = 1.0 / math.sqrt(d)
    one = OneNode("Attention", {"num_heads": heads, "scale": scale}).feed("q", q).feed("k", k).feed("v", v)
    if mask is not None:
        one.feed("mask", mask)
    one.build(q.shape)
    expected = one.expected(lambda *_: attention_oracle(q, k, v, mask, heads, scale))
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize(("batch", "seq", "heads", "d"), [(1, 7, 2, 8), (3, 197, 3, 24), (2, 64, 4, 32)])
def test_packed_qkv_attention_matches_oracle(
    rng: np.random.Generator, tactic: str, batch: int, seq: int, heads: int, d: int
) -> None:
    """``packed_qkv``: Q, K, V are the three parts of one [B, S, 3*H*D] input (tiles reads them in
    place, the others copy them out); with a BERT-style mask."""
    hidden = heads * d
    qkv = rng.standard_normal((batch, seq, 3 * hidden)).astype(np.float32)
    q, k, v = (qkv[..., i * hidden : (i + 1) * hidden] for i in range(3))
    mask = np.where(rng.random((batch, 1, 1, seq)) < 0.25, -10000.0, 0.0).astype(np.float32)
    scale = 1.0 / math.sqrt(d)
    one = OneNode("Attention", {"num_heads": heads, "scale": scale, "packed_qkv": 1}).feed("qkv", qkv)
    one.skip().skip().feed("mask", mask)
    one.build((batch, seq, hidden))
    expected = one.expected(lambda *_: attention_oracle(q, k, v, mask, heads, scale))
    assert_close(one.run_tactic(tactic), expected)


# cpu.attention.micro needs head sizes that are multiples of 32 (and AVX-512: switched on here,
# it is correct on any host): 12-query tiles with short last ones, key counts off the 16 and 32
# lane grids, cross-attention, every mask shape and the packed projection.
MICRO_CASES = [
    (1, 5, 5, 1, 32, None),  # one short tile, one key panel, keys below one vector
    (2, 12, 17, 2, 32, "b11k"),
    (1, 197, 197, 3, 64, "bhqk"),  # the zoo ViT's shape
    (3, 40, 128, 4, 64, "1qk"),  # cross-attention, Sk a multiple of 32
    (2, 25, 33, 2, 96, "k"),
    (1, 128, 128, 4, 64, None),
]


@pytest.fixture
def micro_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    from farm.compiler.kernels.cpu import attention_micro

    monkeypatch.setattr(attention_micro, "OFFERED", True)


@pytest.mark.usefixtures("micro_offered")
@pytest.mark.parametrize(("batch", "sq", "sk", "heads", "d", "mask_kind"), MICRO_CASES)
def test_micro_attention_matches_oracle(
    rng: np.random.Generator, batch: int, sq: int, sk: int, heads: int, d: int, mask_kind: str | None
) -> None:
    test_attention_matches_oracle(rng, "cpu.attention.micro", batch, sq, sk, heads, d, mask_kind)


@pytest.mark.usefixtures("micro_offered")
@pytest.mark.parametrize(("batch", "seq", "heads", "d"), [(1, 7, 2, 32), (3, 197, 3, 64), (2, 128, 4, 64)])
def test_micro_packed_qkv_attention_matches_oracle(
    rng: np.random.Generator, batch: int, seq: int, heads: int, d: int
) -> None:
    test_packed_qkv_attention_matches_oracle(rng, "cpu.attention.micro", batch, seq, heads, d)


def test_micro_attention_needs_whole_32_column_heads(micro_offered: None) -> None:
    """Head size 48: a V row's second 32-column half would run into the next head (or past the
    tensor's end), so the tactic is not offered and the others run."""
    from farm.compiler.kernels import registry

    one = OneNode("Attention", {"num_heads": 2}).feed("q", np.ones((1, 4, 96), np.float32))
    one.feed("k", np.ones((1, 4, 96), np.float32)).feed("v", np.ones((1, 4, 96), np.float32))
    node = one.build((1, 4, 96))
    assert not registry.get_tactic("cpu.attention.micro").supports(node, one.graph)


def test_micro_softmax_columns_flush_masked_keys_to_zero(rng: np.random.Generator) -> None:
    """The micro tactic's softmax down the columns of a transposed [Sk, 32] score block: exact
    zeros for masked keys, float64's probabilities elsewhere, with a mask shared by the queries
    (one broadcast per key) and one that differs per query (gathered)."""
    from farm.compiler.kernels.cpu.attention_micro import softmax_columns

    sk, sq = 20, 27  # the block's last 5 lanes are past Sq: they take the last query's mask
    block = rng.standard_normal((sk, 32)).astype(np.float32)
    for shape in [(1, 1, 1, sk), (1, 1, sq, sk)]:
        mask = np.where(rng.random(shape) < 0.3, -10000.0, 0.0).astype(np.float32)
        mask4 = np.broadcast_to(mask, (1, 1, sq, sk))
        rows = np.minimum(np.arange(32), sq - 1)
        expected = attention_softmax_oracle(block.T, mask4[0, 0, rows], 0.5).T
        got = block.copy()
        gathered = np.empty(sk * 32, np.float32)
        softmax_columns(got.reshape(-1), sk, np.float32(0.5), mask4, True, shape[2] > 1, 0, 0, 0, sq, gathered)
        assert_close(got, expected)
        assert np.all(got[mask4[0, 0, rows].T < 0] == 0)


def test_masked_probabilities_are_zero_not_subnormal(rng: np.random.Generator) -> None:
    """The BLAS tactic's softmax leaves exact zeros for masked keys: subnormal probabilities
    made its P @ V GEMM ~7x slower (BERT's padding mask)."""
    from farm.compiler.kernels.cpu.attention import scale_mask_softmax

    scores = rng.standard_normal((2, 3, 9, 20)).astype(np.float32)
    mask = np.zeros((2, 1, 1, 20), np.float32)
    mask[..., 15:] = -10000.0
    expected = attention_softmax_oracle(scores, mask, 0.5)
    scale_mask_softmax(scores, np.broadcast_to(mask, scores.shape), True, np.float32(0.5))
    assert_close(scores, expected)
    tiny = np.finfo(np.float32).tiny
    assert not np.any((scores != 0) & (np.abs(scores) < tiny))
    assert np.all(scores[..., 15:] == 0)


def attention_softmax_oracle(scores: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * scores + mask) along the last axis, in float64."""
    z = scores.astype(np.float64) * scale + mask
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_micro_blocks_per_task_gives_every_thread_work() -> None:
    from farm.compiler.kernels.cpu.attention_micro import blocks_per_task

    assert blocks_per_task(1, 3, 197, 2) == 3  # 7 blocks in 3 runs: 9 tasks for 2 threads
    assert blocks_per_task(8, 3, 197, 2) == 7  # 24 heads: one task per head
    assert blocks_per_task(1, 1, 5, 4) == 1  # never below one block


def test_attention_block_gives_every_thread_work() -> None:
    from farm.compiler.kernels.cpu.attention import attention_block

    assert attention_block(1, 12, 128, 2) == 64  # 24 tasks already
    assert attention_block(1, 1, 128, 2) == 32  # 4 tasks for 2 threads
    assert attention_block(1, 1, 20, 4) == 8  # never below 8 rows
    assert attention_block(1, 1, 5, 1) == 5  # a block never exceeds the sequence
