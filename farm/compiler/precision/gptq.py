"""Error-compensating INT8 weight rounding: GPTQ (Frantar et al. 2022), activation-aware.

Round-to-nearest treats every weight alone. GPTQ rounds the weight columns of a layer one at a
time and spreads each column's rounding error onto the columns not yet rounded, weighted by the
inverse Hessian ``H = X X^T`` of the layer's input on the calibration data (through the Cholesky
factor of ``H^-1``, dampened by 1 % of its mean diagonal): a lower ``||(W - W_q) X||`` than
rounding each weight to its nearest level, by as much as the input's columns are correlated. The grid stays the same: symmetric
per-output-channel scales ``max|w_c| / 127`` of the FP32 weight, int8 in [-127, 127]; only the
rounding choices change, so the kernels and the engine format do not.

Activation-aware: the INT8 engine does not multiply the FP32 input ``X`` but its quantization
``Xq``, so the Hessian is that of ``Xq`` (centred: the bias takes the mean), and the layer's
bias correction becomes the exact mean error of the quantized layer on the calibration rows,
``W E[X] - W_q E[Xq]`` (it replaces the weight-only one of :func:`bias_correction`). ``Xq`` is the
layer's own quantization of the FP32 model's input (one pass over the data); with
``sequential=True`` it is the input of the model whose earlier INT8 layers are already rounded
(layers in waves, one emulation engine per wave: much slower; on the zoo MLP no better).
Refitting the unrounded target to the quantized input (``W* = W cov(X, Xq) cov(Xq)^-1``) was
tried and dropped: on held-out data it was worse (zoo MLP and MobileNet).

The rounded weight is written into the graph as a new constant ``q * s`` (float32, exactly on the
grid) with the scales as the layer's explicit ``int8_weight_scale``: ``quantize(q * s) = q``, so
the INT8 tactics, the emulation and the engine file all see it, and the FP32 weight (which an
INT8 layer does not need) is left to the other consumers. Only layers pinned to INT8 (strict,
``--layer-precision``) are rounded this way: a layer the tuner may still run in FP32 keeps its
FP32 weight and round-to-nearest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from farm.compiler.ir import Graph, Node
from farm.compiler.precision.calibration import CalibrationError, CalibrationResult, write_cache
from farm.compiler.precision.quantize import (
    ATTR_BIAS_CORRECTION,
    ATTR_WEIGHT_SCALE,
    INT8_MAX,
    activation_quant,
    fake_quantize_activation,
    fake_quantized_graph,
    set_bias_correction,
    weight_output_axis,
    weight_scales,
)

DAMPING = 0.01  # of the mean diagonal of H, added to its diagonal (GPTQ's default)
BLOCK = 128  # columns rounded per block (the lazy batch updates of GPTQ)
STATS_BUDGET = 64 * 2**20  # float64s of layer statistics gathered in one pass over the data (512 MiB)


def weight_matrix(node: Node, w: np.ndarray) -> np.ndarray:
    """The weight of a conv or GEMM layer as [N output channels, K] (float64), K in the order
    of :func:`layer_columns`."""
    w = np.asarray(w, dtype=np.float64)
    if node.op_type in ("FusedConv", "Conv"):
        return w.reshape(w.shape[0], -1)
    return w if weight_output_axis(node) == 0 else w.T


def weight_from_matrix(node: Node, m: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`weight_matrix`."""
    if node.op_type in ("FusedConv", "Conv"):
        return m.reshape(shape)
    return m if weight_output_axis(node) == 0 else m.T


def _conv_geometry(node: Node, weight_shape: Sequence[int]) -> tuple[int, ...]:
    from farm.compiler.kernels.cpu.conv import ConvGeometry

    g = ConvGeometry.of(node, weight_shape)
    return g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, g.pad_bottom, g.pad_right, g.dh, g.dw


def layer_columns(node: Node, x: np.ndarray, weight_shape: Sequence[int]) -> np.ndarray:
    """The rows the layer's weight multiplies: [rows, K] (float32). A GEMM's input rows; a
    (group 1) conv's receptive fields (im2col, zero padding), K ordered (c, i, j) as the weight."""
    x = np.asarray(x, dtype=np.float32)
    if node.op_type not in ("FusedConv", "Conv"):
        return x.reshape(-1, x.shape[-1])
    if x.ndim == 3:
        x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    kh, kw, sh, sw, pt, pl, pb, pr, dh, dw = _conv_geometry(node, weight_shape)
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    ho = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [
        padded[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]  # each [N, C, ho, wo]
    cols = np.stack(taps, axis=2)  # [N, C, kh*kw, ho, wo]
    n, c = x.shape[0], x.shape[1]
    return np.ascontiguousarray(
        cols.reshape(n, c * kh * kw, ho * wo).transpose(0, 2, 1).reshape(-1, c * kh * kw)
    )


@dataclass
class LayerStatistics:
    """Sums over the calibration rows of one layer: ``Xq`` (the quantized input the INT8 layer
    multiplies) and ``X`` (the FP32 model's input): first moments and ``Xq^T Xq``."""

    columns: int
    rows: int = 0
    sum_q: np.ndarray = field(init=False)
    sum_f: np.ndarray = field(init=False)
    qq: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        k = self.columns
        self.sum_q, self.sum_f = np.zeros(k), np.zeros(k)
        self.qq = np.zeros((k, k))

    def update(self, cols_f: np.ndarray, cols_q: np.ndarray) -> None:
        """Add rows (the same rows of the FP32 and the quantized input)."""
        f = cols_f.astype(np.float64)
        q = cols_q.astype(np.float64)
        self.rows += f.shape[0]
        self.sum_f += f.sum(axis=0)
        self.sum_q += q.sum(axis=0)
        self.qq += q.T @ q

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(E[X], E[Xq], cov(Xq))."""
        n = max(self.rows, 1)
        mean_f, mean_q = self.sum_f / n, self.sum_q / n
        return mean_f, mean_q, self.qq / n - np.outer(mean_q, mean_q)


def _dampened(h: np.ndarray, damping: float) -> tuple[np.ndarray, np.ndarray]:
    """``H`` with dead columns (never non-zero) given a unit diagonal and ``damping`` times the
    mean diagonal added; also the dead-column mask."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    h[np.diag_indices_from(h)] += damping * float(np.mean(np.diag(h)))
    return h, dead


def gptq_round(
    w: np.ndarray, h: np.ndarray, scales: np.ndarray, *, damping: float = DAMPING, block: int = BLOCK
) -> np.ndarray:
    """GPTQ: int8 ``q`` [N, K] for the weight ``w`` [N, K] on the grid ``scales`` [N] (symmetric,
    [-127, 127]) minimizing ``||(w - q * s) X||`` approximately, with ``h`` = X X^T [K, K]."""
    w = np.array(w, dtype=np.float64)
    h, dead = _dampened(h, damping)
    w[:, dead] = 0.0
    s = np.asarray(scales, dtype=np.float64).reshape(-1, 1)
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper: H^-1 = U^T U
    except np.linalg.LinAlgError:
        return np.clip(np.rint(w / s), -INT8_MAX, INT8_MAX).astype(np.int8)
    k = w.shape[1]
    q = np.zeros(w.shape, dtype=np.float64)
    for start in range(0, k, block):
        end = min(start + block, k)
        wb = w[:, start:end].copy()
        errors = np.zeros_like(wb)
        ub = hinv[start:end, start:end]
        for i in range(end - start):
            col = wb[:, i]
            qc = np.clip(np.rint(col / s[:, 0]), -INT8_MAX, INT8_MAX)
            q[:, start + i] = qc
            err = (col - qc * s[:, 0]) / ub[i, i]
            wb[:, i + 1 :] -= np.outer(err, ub[i, i + 1 :])
            errors[:, i] = err
        w[:, end:] -= errors @ hinv[start:end, end:]
    return q.astype(np.int8)


def solve_layer(
    node: Node, w: np.ndarray, stats: LayerStatistics, *, damping: float = DAMPING
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 weight in the layer's layout, per-channel scales, bias correction [N]) of one layer
    from its statistics: GPTQ with ``H = cov(Xq)``; the correction ``W E[X] - W_q E[Xq]``."""
    wm = weight_matrix(node, w)
    scales = weight_scales(np.asarray(w, np.float32), weight_output_axis(node))
    mean_f, mean_q, h = stats.centred()
    q = gptq_round(wm, h, scales, damping=damping)
    deq = q.astype(np.float64) * scales.astype(np.float64).reshape(-1, 1)
    correction = wm @ mean_f - deq @ mean_q
    shape = np.shape(w)
    return (
        weight_from_matrix(node, q, shape).astype(np.int8).reshape(shape),
        scales,
        correction.astype(np.float32),
    )


def weight_digest(w: np.ndarray) -> str:
    """A short digest of an FP32 weight (a cached rounding is only reused for the same weight)."""
    return hashlib.sha256(np.ascontiguousarray(w, dtype=np.float32).tobytes()).hexdigest()[:16]


def install_rounding(
    graph: Graph, node: Node, q: np.ndarray, scales: np.ndarray, correction: np.ndarray | None
) -> None:
    """Point ``node`` at a new constant ``q * s`` (float32, on the grid) with ``scales`` as its
    explicit weight scales and ``correction`` as its bias correction (None: none)."""
    axis = weight_output_axis(node)
    shape = [1] * q.ndim
    shape[axis] = -1
    deq = (q.astype(np.float32) * scales.astype(np.float32).reshape(shape)).astype(np.float32)
    const = graph.add_const(graph.fresh_name(f"{node.input(1)}_gptq"), deq)
    node.inputs = [node.inputs[0], const.name, *node.inputs[2:]]
    node.attrs[ATTR_WEIGHT_SCALE] = np.asarray(scales, dtype=np.float32).reshape(-1)
    node.attrs.pop(ATTR_BIAS_CORRECTION, None)
    if correction is not None:
        set_bias_correction(node, correction)


def layer_waves(graph: Graph, layers: Sequence[Node]) -> list[list[Node]]:
    """``layers`` grouped so that every layer's INT8 ancestors (among ``layers``) lie in earlier
    groups (graph nodes in topological order)."""
    chosen = {n.name for n in layers}
    level: dict[str, int] = {}
    waves: dict[int, list[Node]] = {}
    for node in graph.nodes:
        depth = max((level.get(i, 0) for i in node.inputs if i), default=0)
        if node.name in chosen:
            waves.setdefault(depth, []).append(node)
            depth += 1
        for out in node.outputs:
            level[out] = depth
    return [waves[d] for d in sorted(waves)]


@dataclass
class GptqResult:
    """Per layer: int8 weight, scales, bias correction and the FP32 weight's digest."""

    layers: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, str]] = field(default_factory=dict)


def _statistics_for(node: Node, w: np.ndarray) -> LayerStatistics:
    return LayerStatistics(weight_matrix(node, w).shape[1])


def _chunks(layers: Sequence[Node], graph: Graph, budget: int = STATS_BUDGET) -> list[list[Node]]:
    """``layers`` split so that the statistics of one chunk hold at most ``budget`` float64s
    (a K x K matrix per layer); a chunk has at least one layer."""
    chunks: list[list[Node]] = [[]]
    used = 0
    for node in layers:
        w = graph.const(node.input(1))
        k = weight_matrix(node, w).shape[1] if w is not None else 0
        if chunks[-1] and used + k * k > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(node)
        used += k * k
    return [c for c in chunks if c]


def gptq_layers(
    graph: Graph,
    layers: Sequence[Node],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    damping: float = DAMPING,
    bias_correction: bool = True,
    sequential: bool = False,
) -> GptqResult:
    """Round the weights of ``layers`` (with their activation quantization already set) with
    activation-aware GPTQ over the calibration ``batches``, installing each result in
    ``graph`` (see :func:`install_rounding`). ``Xq`` is the layer's own quantization of the FP32
    model's input; with ``sequential``, the input of the model whose earlier INT8 layers are
    already rounded (wave by wave: one emulation engine per wave, much slower)."""
    from farm.compiler.precision.observe import GraphRunner

    batches = list(batches)
    result = GptqResult()
    if not batches or not layers:
        return result
    max_batch = max(len(next(iter(b.values()))) for b in batches)
    weights = {n.name: graph.const(n.input(1)) for n in layers}
    reference: GraphRunner | None = None
    if sequential:
        groups = layer_waves(graph, layers)
        reference = GraphRunner(
            graph, sorted({n.input(0) for n in layers}), max_batch=max_batch, example=batches[0]
        )
    else:
        groups = _chunks(layers, graph)
    done: set[str] = set()
    for group in groups:
        wanted = sorted({n.input(0) for n in group})
        if sequential:
            emulated = GraphRunner(
                fake_quantized_graph(graph, done), wanted, max_batch=max_batch, example=batches[0]
            )
        else:
            emulated = GraphRunner(graph, wanted, max_batch=max_batch, example=batches[0])
        stats = {n.name: _statistics_for(n, weights[n.name]) for n in group}  # type: ignore[arg-type]
        for feeds in batches:
            quant = emulated.run(feeds)
            fp32 = reference.run(feeds) if reference is not None else quant
            for node in group:
                w = weights[node.name]
                aq = activation_quant(node)
                assert w is not None and aq is not None
                xq = fake_quantize_activation(quant[node.input(0)], aq)
                stats[node.name].update(
                    layer_columns(node, fp32[node.input(0)], w.shape), layer_columns(node, xq, w.shape)
                )
        for node in group:
            w = weights[node.name]
            assert w is not None
            q, scales, correction = solve_layer(node, w, stats[node.name], damping=damping)
            result.layers[node.name] = (q, scales, correction, weight_digest(w))
            install_rounding(graph, node, q, scales, correction if bias_correction else None)
            done.add(node.name)
    return result


def encode_rounding(q: np.ndarray, scales: np.ndarray, correction: np.ndarray, digest: str) -> dict[str, Any]:
    """One layer's rounding as JSON for the calibration cache (int8 weight zlib + base64)."""
    return {
        "digest": digest,
        "shape": [int(d) for d in q.shape],
        "weight": base64.b64encode(zlib.compress(np.ascontiguousarray(q, np.int8).tobytes(), 6)).decode(
            "ascii"
        ),
        "scales": [float(v) for v in np.asarray(scales, np.float32).reshape(-1)],
        "correction": [float(v) for v in np.asarray(correction, np.float32).reshape(-1)],
    }


def decode_rounding(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Inverse of :func:`encode_rounding`: (int8 weight, scales, correction, digest)."""
    shape = tuple(int(d) for d in entry["shape"])
    raw = zlib.decompress(base64.b64decode(entry["weight"]))
    q = np.frombuffer(raw, dtype=np.int8).reshape(shape).copy()
    scales = np.asarray(entry["scales"], dtype=np.float32)
    correction = np.asarray(entry["correction"], dtype=np.float32)
    return q, scales, correction, str(entry["digest"])


def gptq_eligible(graph: Graph, layers: Sequence[Node]) -> list[Node]:
    """The layers of ``layers`` an INT8 tactic runs (a grouped conv has none: it stays FP32 and
    keeps its FP32 weight)."""
    from farm.compiler.kernels.registry import candidates

    return [
        n for n in layers if activation_quant(n) is not None and candidates(n, graph, precisions=("int8",))
    ]


def apply_gptq(
    graph: Graph,
    layers: Sequence[Node],
    result: CalibrationResult,
    batches: Iterable[Mapping[str, np.ndarray]] | None,
    *,
    cache: str | os.PathLike[str] | None = None,
    bias_correction: bool = True,
) -> int:
    """GPTQ-round the INT8-runnable ``layers`` (activation quantization already set): from the
    calibration ``result`` when it holds a rounding of the same weights for every one of them,
    else over ``batches`` (then stored in ``result`` and written to ``cache``). Returns the
    number of layers rounded."""
    eligible = gptq_eligible(graph, layers)
    if not eligible:
        return 0
    digests = {n.name: weight_digest(graph.const(n.input(1))) for n in eligible}  # type: ignore[arg-type]
    stored = result.rounding
    if all(n.name in stored and stored[n.name].get("digest") == digests[n.name] for n in eligible):
        for node in eligible:
            q, scales, correction, _ = decode_rounding(stored[node.name])
            install_rounding(graph, node, q, scales, correction if bias_correction else None)
        return len(eligible)
    if batches is None:
        raise CalibrationError(
            f"the calibration cache holds no GPTQ rounding for these weights ({len(eligible)} layers); "
            "give calibration data (--calib) to compute it, or use the calibrator option no-gptq"
        )
    rounded = gptq_layers(graph, eligible, batches, bias_correction=bias_correction)
    result.rounding = {name: encode_rounding(*entry) for name, entry in rounded.layers.items()}
    if cache is not None:
        write_cache(cache, result)
    return len(rounded.layers)
