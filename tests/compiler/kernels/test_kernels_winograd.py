"""Winograd conv tactics (F(4x4,3x3), F(2x2,3x3)) against the reference and a float64 oracle:
every padding form, tiles that overhang the output, batches split into image groups, every
epilogue; and what they must decline."""

from __future__ import annotations

import numpy as np
import pytest
from kernels_harness import OneNode, assert_close
from test_kernels_conv import _conv_case, conv_oracle

from farm.compiler.frontend.canonical import resolve_auto_pad
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.cpu.winograd import winograd_matrices

TACTICS = [
    "cpu.conv.winograd",
    "cpu.conv.winograd_f2",
    "cpu.conv.winograd_1t",
    "cpu.conv.winograd_f2_1t",
    "cpu.conv.winograd_fused",
    "cpu.conv.winograd_fused_f2",
]
FUSED = TACTICS[4:]


def _case(n: int, c: int, h: int, w: int, m: int, pads: tuple[int, int, int, int]) -> tuple:
    return (n, c, h, w, m, (3, 3), (1, 1), pads, (1, 1), 1)


CASES = [
    _case(1, 3, 9, 11, 8, (1, 1, 1, 1)),  # odd sizes: the last tile row and column overhang
    _case(3, 5, 7, 6, 7, (0, 0, 0, 0)),  # no padding, batch 3
    _case(2, 6, 10, 13, 5, (2, 1, 0, 2)),  # asymmetric pads larger than the kernel's half
    _case(1, 4, 3, 3, 3, (0, 0, 0, 0)),  # a single output pixel
    _case(2, 7, 4, 9, 9, (0, 2, 1, 0)),
    _case(5, 4, 30, 30, 6, (1, 1, 1, 1)),  # several image groups, the last one partial
    _case(2, 16, 33, 35, 24, (1, 1, 1, 1)),  # big enough for both pools' parallel paths
    _case(1, 3, 6, 70, 13, (1, 2, 0, 1)),  # 18 F(4x4) tile columns: two 16-tile vectors a row
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tactic", TACTICS)
def test_winograd_matches_reference(rng: np.random.Generator, case: tuple, tactic: str) -> None:
    one, expected = _conv_case(rng, case, activation="LeakyRelu", alpha=0.1, residual="pre")
    assert_close(one.run_tactic(tactic), expected)


EPILOGUES = [
    ("", None, True),
    ("Relu", None, False),
    ("Relu", "pre", True),
    ("Clip", "post", True),
    ("Silu", "post", False),
    ("Gelu", None, True),
    ("HardSwish", "pre", False),
]


@pytest.mark.parametrize(("activation", "residual", "with_bias"), EPILOGUES)
@pytest.mark.parametrize("tactic", TACTICS[:2] + FUSED)
def test_winograd_epilogues(
    rng: np.random.Generator, activation: str, residual: str | None, with_bias: bool, tactic: str
) -> None:
    one, expected = _conv_case(
        rng,
        _case(2, 5, 11, 10, 6, (1, 0, 1, 2)),
        activation=activation,
        beta=6.0,
        residual=residual,
        with_bias=with_bias,
    )
    assert_close(one.run_tactic(tactic), expected)


@pytest.mark.parametrize("tactic", TACTICS[:2] + FUSED)
def test_plain_conv_and_runtime_bias(rng: np.random.Generator, tactic: str) -> None:
    """A plain Conv without bias, and one whose bias is fed at run time (not packed)."""
    one, expected = _conv_case(rng, _case(2, 3, 8, 9, 4, (1, 1, 1, 1)), op_type="Conv", with_bias=False)
    assert_close(one.run_tactic(tactic), expected)
    x = rng.standard_normal((2, 3, 8, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [0, 1, 1, 0], "dilations": [1, 1], "group": 1}
    z = conv_oracle(x, w, b, (1, 1), (0, 1, 1, 0), (1, 1), 1)
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True).feed("b", b)
    one.build(z.shape)
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("tactic", TACTICS[:2])
def test_auto_pad_resolved_by_the_frontend(rng: np.random.Generator, auto_pad: str, tactic: str) -> None:
    """auto_pad reaches the tactics as explicit pads (frontend ``resolve_auto_pad``); an
    unresolved one is declined."""
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    pads = (0, 0, 0, 0) if auto_pad == "VALID" else (1, 1, 1, 1)
    z = conv_oracle(x, w, None, (1, 1), pads, (1, 1), 1)
    attrs = {"auto_pad": auto_pad, "strides": [1, 1]}
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True)
    node = one.build(z.shape)
    assert not get_tactic(tactic).supports(node, one.graph)
    resolve_auto_pad(node, one.graph)
    assert "auto_pad" not in node.attrs
    assert_close(one.run_tactic(tactic), one.expected(lambda *_: z))


@pytest.mark.parametrize("tactic", TACTICS[:2] + FUSED)
def test_accuracy_on_a_resnet_layer(rng: np.random.Generator, tactic: str) -> None:
    """256 -> 256 channels at 14x14 (ResNet-18 stage 3), weights scaled as trained ones are:
    relative L2 error against a float64 direct conv well inside FP32's 1e-5 (measured: F(4x4)
    ~3e-6, F(2x2) ~5e-7)."""
    x = rng.standard_normal((1, 256, 14, 14)).astype(np.float32)
    w = (rng.standard_normal((256, 256, 3, 3)) / np.sqrt(256 * 9)).astype(np.float32)
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    z = conv_oracle(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    one = OneNode("Conv", attrs).feed("x", x).feed("w", w, const=True)
    one.build(z.shape)
    got = one.run_tactic(tactic).astype(np.float64)
    rel_l2 = float(np.linalg.norm(got - z) / np.linalg.norm(z))
    assert rel_l2 < (5e-6 if tactic in ("cpu.conv.winograd", "cpu.conv.winograd_fused") else 1e-6), rel_l2


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_correlation(m: int) -> None:
    """A^T [(G g) * (B^T d)] is the 1-D correlation of d (m + 2 samples) with g (3 taps)."""
    at, g_mat, bt = winograd_matrices(m)
    rng = np.random.default_rng(m)
    d = rng.standard_normal(m + 2)
    g = rng.standard_normal(3)
    direct = np.array([d[i : i + 3] @ g for i in range(m)])
    np.testing.assert_allclose(at @ ((g_mat @ g) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)


DECLINED = [
    ("stride 2", (1, 4, 9, 9, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1)),
    ("stride 1x2", (1, 4, 9, 9, 4, (3, 3), (1, 2), (1, 1, 1, 1), (1, 1), 1)),
    ("dilation 2", (1, 4, 9, 9, 4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 1)),
    ("groups", (1, 4, 9, 9, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2)),
    ("depthwise", (1, 4, 9, 9, 4, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4)),
    ("1x1", (1, 4, 9, 9, 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1)),
    ("5x5", (1, 4, 9, 9, 4, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1)),
    ("3x1", (1, 4, 9, 9, 4, (3, 1), (1, 1), (1, 0, 1, 0), (1, 1), 1)),
]


@pytest.mark.parametrize(("what", "case"), DECLINED, ids=[d[0] for d in DECLINED])
def test_declines_other_convs(rng: np.random.Generator, what: str, case: tuple) -> None:
    one, _ = _conv_case(rng, case)
    for tactic in TACTICS:
        assert not get_tactic(tactic).supports(one.node, one.graph), (tactic, what)


def test_declines_runtime_weights_1d_and_float64(rng: np.random.Generator) -> None:
    attrs = {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1], "dilations": [1, 1], "group": 1}
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    runtime = OneNode("Conv", attrs).feed("x", x).feed("w", w)
    runtime.build((1, 4, 6, 6))
    one_d = (
        OneNode("Conv", {"kernel_shape": [3], "pads": [1, 1]})
        .feed("x", x[:, :, 0])
        .feed("w", w[:, :, 0], const=True)
    )
    one_d.build((1, 4, 6))
    double = (
        OneNode("Conv", attrs).feed("x", x.astype(np.float64)).feed("w", w.astype(np.float64), const=True)
    )
    double.build((1, 4, 6, 6), "float64")
    for one in (runtime, one_d, double):
        for tactic in TACTICS:
            assert not get_tactic(tactic).supports(one.node, one.graph), (tactic, one.node)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("numba_pool", [True, False])
def test_gemm_stack_splits_match_matmul(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int, numba_pool: bool
) -> None:
    """Every split of the Winograd GEMM stack (numba's pool calling BLAS, or Python threads when
    no BLAS is callable from numba) gives each slice's product."""
    from farm.compiler.kernels.cpu import _blas, winograd

    if not numba_pool:
        monkeypatch.setattr(_blas, "AVAILABLE", False)
    u = rng.standard_normal((16, 24, 19)).astype(np.float32)
    v = rng.standard_normal((16, 19, 37)).astype(np.float32)
    out = np.full((16, 24, 37), np.nan, np.float32)
    winograd.gemm_stack(u, v, out, threads)
    np.testing.assert_allclose(out, np.matmul(u.astype(np.float64), v), rtol=1e-4, atol=1e-4)


GROUPINGS = [
    ("bands of 2 tile rows, the last one short", 2, 1, 2),
    ("one tile row per band, panel runs", 1, 1, 3),
    ("two images per group, the last group short", 0, 2, 1),
    ("all images in one group, one panel per run", 0, 5, 4),
]


@pytest.mark.parametrize(("what", "band", "images", "runs"), GROUPINGS, ids=[g[0] for g in GROUPINGS])
@pytest.mark.parametrize("tactic", FUSED)
def test_fused_every_grouping(
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    what: str,
    band: int,
    images: int,
    runs: int,
    tactic: str,
) -> None:
    """Whatever grouping the plan picks (bands of tile rows with a partial last band, several
    images per group, output panels cut into runs), every output pixel and channel comes out
    right: 3 images of 17 x 19 (5 x 5 tiles of F(4x4), 9 x 10 of F(2x2)), 40 channels (4 panels)
    with a residual and bias."""
    from farm.compiler.kernels.cpu import winograd_fused

    def forced(
        n: int, th: int, tw: int, c: int, a: int, panels: int, threads: int
    ) -> winograd_fused.Grouping:
        widest = band * tw if band else min(images, n) * th * tw
        groups = n * -(-th // band) if band else -(-n // images)
        return winograd_fused.Grouping(band, images if not band else 1, groups, -(-widest // 32) * 32, runs)

    monkeypatch.setattr(winograd_fused, "plan_groups", forced)
    one, expected = _conv_case(rng, _case(3, 6, 17, 19, 40, (1, 1, 1, 1)), activation="Relu", residual="post")
    assert_close(one.run_tactic(tactic), expected)


def test_fused_plan_keeps_slabs_in_l2_and_feeds_every_thread() -> None:
    """The plan's groups: whole 32-column panels, one point's V slab within its budget where 32
    columns allow it, no more output-panel runs than needed to give each thread a task, and
    fewer reads of a large U where the tiles are few."""
    from farm.compiler.kernels.cpu.winograd_fused import MAX_COLS, SLAB_BUDGET, plan_groups

    # ResNet 64 @56, batch 8 (F(4x4): 14 x 14 tiles an image): bands of tile rows, no runs
    plan = plan_groups(8, 14, 14, 64, 6, 6, 2)
    assert plan.band > 0 and plan.runs == 1 and plan.groups >= 8
    assert 64 * plan.cols * 4 <= SLAB_BUDGET and plan.cols <= MAX_COLS and plan.cols % 32 == 0
    # 512 @7, batch 8 (2 x 2 tiles an image): all 32 tiles in one group, so U (37.7 MB) is
    # read once; two runs of output panels, one per thread
    plan = plan_groups(8, 2, 2, 512, 6, 43, 2)
    assert (plan.band, plan.images, plan.groups, plan.cols, plan.runs) == (0, 8, 1, 32, 2)
    # batch 1: each of the two threads gets work
    for th, c in ((14, 64), (7, 128), (4, 256), (2, 512)):
        plan = plan_groups(1, th, th, c, 6, -(-c // 12), 2)
        assert plan.groups * plan.runs >= 2, (th, c, plan)
    # one thread: never cut the panels into runs (each run repeats the input transform)
    assert plan_groups(1, 14, 14, 64, 6, 6, 1).runs == 1
    # batch 1, where U is small beside the input (ResNet 64 @56 and 128 @28): one band per
    # thread or more, in one run, so each worker reads and writes its own rows in a model
    for th, c in ((14, 64), (7, 128)):
        plan = plan_groups(1, th, th, c, 6, -(-c // 12), 2)
        assert plan.runs == 1 and plan.band > 0 and plan.groups >= 2, (th, c, plan)


def test_channel_stride_is_never_a_multiple_of_4_kib() -> None:
    """V's channel stride keeps a B panel's rows out of a single L1 set."""
    from farm.compiler.kernels.cpu.winograd_fused import channel_stride

    for a in (4, 6):
        for cols in range(32, 257, 32):
            assert (channel_stride(a, cols) * 4) % 4096 != 0


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    ("h", "w", "pt", "pl"), [(9, 11, 1, 1), (6, 70, 2, 0), (13, 40, -3, 2), (5, 5, 0, 3)]
)
def test_vector_input_transform_matches_the_scalar_one(m: int, h: int, w: int, pt: int, pl: int) -> None:
    """``input_tiles16`` (16 tiles in the lanes, V channel-major) computes the values of
    ``input_plane`` (per-tile gather, V point-major) for every tile: one and several 16-tile
    chunks a row, a band's negative top pad, pads wider than the kernel's half."""
    from farm.compiler.kernels.cpu.winograd import input_plane
    from farm.compiler.kernels.cpu.winograd_fused import input_tiles16

    rng = np.random.default_rng(h * 100 + w + m)
    a = m + 2
    plane = rng.standard_normal((h, w)).astype(np.float32)
    th, tw = -(-max(h + pt - 2, 1) // m), -(-(w + pl) // m)
    tiles = th * tw
    cols = -(-tiles // 32) * 32 + 32
    b = 5  # where the plane's tiles start in a row of V
    want = np.full((a * a, 1, cols), np.nan, np.float32)
    input_plane(
        plane, m, pt, pl, th, tw, want, 0, b,
        np.zeros((tw + 1) * m, np.float32), np.zeros((m * a, (th + 1) * tw + 1), np.float32),
        np.zeros((a * m, (th + 1) * tw), np.float32),
    )  # fmt: skip
    got = np.full(2 * a * a * cols, np.nan, np.float32)  # two channels: the plane is channel 1
    hbuf = np.full((th * m + 2) * -(-tw // 16) * a * 16, np.nan, np.float32)
    input_tiles16(plane, m, pt, pl, th, tw, got, cols, a * a * cols, 1, b, hbuf)
    got = got.reshape(2, a * a, cols)
    np.testing.assert_allclose(got[1, :, b : b + tiles], want[:, 0, b : b + tiles], rtol=1e-6, atol=1e-5)
    assert np.isnan(got[0]).all() and np.isnan(got[1, :, :b]).all() and np.isnan(got[1, :, b + tiles :]).all()


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(("ho", "wo"), [(9, 11), (6, 70), (4, 64), (1, 3)])
def test_vector_output_transform_matches_the_scalar_one(m: int, ho: int, wo: int) -> None:
    """``output_tiles16`` (16 tiles in the lanes, interleaved row stores) writes what
    ``output_plane`` writes for every output pixel, clipped at the plane's bottom and right edges
    (tiles that overhang), with one and several 16-tile chunks a row, and nothing past the plane."""
    from farm.compiler.kernels.cpu.winograd import output_plane
    from farm.compiler.kernels.cpu.winograd_fused import output_tiles16

    rng = np.random.default_rng(ho * 100 + wo + m)
    a = m + 2
    th, tw = -(-ho // m), -(-wo // m)
    tiles = th * tw
    cols = -(-tiles // 32) * 32
    t0 = 3  # where the plane's tiles start in M's rows
    mm = rng.standard_normal((a * a, 2, cols + t0 + 16)).astype(np.float32)
    want = np.full(ho * wo, np.nan, np.float32)
    output_plane(
        mm,
        1,
        t0,
        m,
        th,
        tw,
        want,
        ho,
        wo,
        np.zeros((m * a, tiles), np.float32),
        np.zeros((m * m, tiles), np.float32),
    )
    got = np.full(ho * wo + 80, np.nan, np.float32)
    step = 2 * (cols + t0 + 16)  # one point on, in the flat M
    output_tiles16(mm.reshape(-1), (cols + t0 + 16) + t0, step, m, th, tw, got, ho, wo)
    np.testing.assert_allclose(got[: ho * wo], want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[ho * wo :]).all()


def test_zeroed_workspace_is_zero_when_allocated_and_kept_across_runs() -> None:
    """``workspace(..., zeroed=True)`` (the fused Winograd's V, whose padding columns are
    computed on): zeros on (re)allocation, the same buffer while the shape holds, one buffer per
    key whatever the batch size (no buffer left behind per shape)."""
    from farm.compiler.kernels.cpu._operands import workspace
    from farm.compiler.kernels.registry import Prepared

    prepared = Prepared()
    first = workspace(prepared, "v", (2, 8), zeroed=True)
    assert not first.any()
    first[:] = 1.0
    assert workspace(prepared, "v", (2, 8), zeroed=True) is first
    second = workspace(prepared, "v", (2, 16), zeroed=True)
    assert second is not first and not second.any()
    assert list(prepared.scratch) == ["v"]
