"""INT8 calibration: per-tensor activation ranges from user data.

Reader protocol: calibration data is either a path to an ``.npz`` whose arrays are named after
the model inputs (or ``input:<name>``, the fixtures' convention) with samples along axis 0, a
mapping of such arrays, or any iterable yielding ``{input name: batch array}`` dicts (a Python
generator, a list). :func:`calibration_batches` turns all three into batches.

The builder runs an FP32 engine of the optimized graph over the batches and collects, for each tensor that feeds
an INT8-capable layer, the absolute maximum and a histogram of ``|x|`` (2048 bins; its range
doubles, merging bin pairs, when a later batch exceeds it). A calibrator turns those statistics
into the threshold of the tensor's quantization range:

* ``minmax``: the absolute maximum.
* ``percentile``: the given percentile of ``|x|`` (99.99 by default).
* ``entropy``: TensorRT's method: the threshold whose 128-level quantized distribution has the
  smallest KL divergence from the clipped reference distribution.
* ``mse``: the threshold that minimizes the expected squared quantization error.

Activation schemes (the calibrator spec ``NAME[:OPTION,...]``, e.g. ``"entropy"``,
``"entropy:symmetric"``, ``"mse:no-bias-correction"``):

* default (**asymmetric uint8**, as ONNX Runtime's static quantizer): the calibrator runs on each
  side of zero separately (histograms of the positive values and of the negated negative ones),
  giving ``[lo, hi]``; a tensor that was never negative (ReLU, ReLU6, Sigmoid outputs) becomes
  uint8 with zero point 0 and scale ``hi / 255``, any other one uint8 with a zero point
  (``scale = (hi - lo) / 255``). Both use the whole code range instead of the half that symmetric
  int8 leaves to a sign the tensor does not have.
* ``symmetric``: TensorRT's int8 with zero point 0 and ``scale = amax / 127`` (amax from the
  histogram of ``|x|``).
* **bias correction** (default; ``no-bias-correction`` turns it off): the per-channel mean of
  every calibrated tensor is kept, and each INT8 layer's bias absorbs the expected error of its
  quantized weight, ``(W - W_q) . E[x]`` per output channel (Nagel et al. 2019, empirical bias
  correction, weight term).
* **GPTQ** weight rounding (``gptq``; off by default, ``no-gptq`` names the default): the layers
  pinned to INT8 round their weights on the same int8 grid with activation-aware GPTQ, and
  their bias correction becomes the exact mean error of the quantized layer (see :mod:`gptq`).

A calibration cache (JSON, version 3) stores, per tensor, the amax, the range and the channel
means with the calibrator spec and a signature of the layers, and with GPTQ each layer's rounded
int8 weight (zlib + base64), scales, bias correction and a digest of the FP32 weight it rounds; a
rebuild that finds a matching cache does not calibrate again. Version 2 caches read as
``no-gptq``, version 1 caches as ``symmetric,no-bias-correction,no-gptq``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from farm.compiler.ir import Graph
from farm.compiler.precision.observe import BatchAxes, batch_axes, batch_size, batch_slice

CALIBRATORS = ("minmax", "percentile", "entropy", "mse")
CALIBRATOR_OPTIONS = ("symmetric", "no-bias-correction", "gptq", "no-gptq")
DEFAULT_CALIBRATOR = "entropy"
DEFAULT_PERCENTILE = 99.99
HISTOGRAM_BINS = 2048
QUANT_LEVELS = 128  # positive half of int8, as TensorRT's entropy calibrator
DEFAULT_BATCH = 32
CACHE_FORMAT = "farm-calibration"
CACHE_VERSION = 3
DEFAULT_GPTQ = False  # measured: no better than round-to-nearest + bias correction on the zoo

CalibrationSource = str | os.PathLike[str] | Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]]


class CalibrationError(ValueError):
    """Calibration data or a calibration cache that cannot be used."""


def load_samples_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` of samples, keyed by input name (``input:`` prefixes dropped)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k.removeprefix("input:"): data[k] for k in data.files if not k.startswith("output:")}
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read samples from {path}: {exc}") from exc


def _split(arrays: Mapping[str, np.ndarray], batch: int, axes: BatchAxes) -> Iterator[dict[str, np.ndarray]]:
    counts = {k: batch_size({k: a}, axes) for k, a in arrays.items() if axes.get(k, 0) is not None}
    if len(set(counts.values())) > 1:
        raise CalibrationError(
            f"sample arrays differ in sample count (along each input's batch axis): {counts}"
        )
    total = next(iter(counts.values()), 1)
    for start in range(0, total, batch):
        yield {k: np.asarray(batch_slice(a, axes.get(k, 0), start, start + batch)) for k, a in arrays.items()}


def calibration_batches(
    source: CalibrationSource,
    inputs: list[str],
    batch: int = DEFAULT_BATCH,
    limit: int | None = None,
    axes: BatchAxes | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of feeds for the graph ``inputs`` from any supported source, at most ``limit``
    samples in all. Samples run along each input's batch axis (``axes``, see
    :func:`observe.batch_axes`; axis 0 when not given): a GRU state ``[layers, batch, hidden]``
    stacks its samples on axis 1."""
    axes = axes or {}
    if isinstance(source, str | os.PathLike):
        batches: Iterable[Mapping[str, np.ndarray]] = _split(load_samples_npz(source), batch, axes)
    elif isinstance(source, Mapping):
        batches = _split({k.removeprefix("input:"): v for k, v in source.items()}, batch, axes)
    else:
        batches = source
    seen = 0
    for feeds in batches:
        missing = [n for n in inputs if n not in feeds]
        if missing:
            raise CalibrationError(f"calibration data lacks input(s) {missing}; it has {sorted(feeds)}")
        feeds = {n: np.asarray(feeds[n]) for n in inputs}
        if limit is not None:
            take = limit - seen
            if take <= 0:
                return
            feeds = {n: batch_slice(a, axes.get(n, 0), 0, take) for n, a in feeds.items()}
        seen += batch_size(feeds, axes) if feeds else 0
        yield feeds


@dataclass
class TensorStatistics:
    """Absolute maximum and a histogram of ``|x|`` over [0, ``edge``] for one tensor."""

    amax: float = 0.0
    edge: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(HISTOGRAM_BINS, np.int64))

    def update(self, x: np.ndarray) -> None:
        """Add one batch of values."""
        a = np.abs(np.asarray(x, dtype=np.float32).ravel())
        if a.size == 0:
            return
        batch_max = float(a.max())
        self.amax = max(self.amax, batch_max)
        if self.edge == 0.0:
            self.edge = batch_max if batch_max > 0 else 1e-8
        while batch_max > self.edge:  # double the range: merge neighbouring bins
            self.counts = np.concatenate(
                [self.counts.reshape(-1, 2).sum(axis=1), np.zeros(HISTOGRAM_BINS // 2, np.int64)]
            )
            self.edge *= 2.0
        hist, _ = np.histogram(a, bins=HISTOGRAM_BINS, range=(0.0, self.edge))
        self.counts += hist

    @property
    def bin_width(self) -> float:
        return self.edge / HISTOGRAM_BINS


@dataclass
class RangeStatistics:
    """Everything calibration gathers about one tensor: the histogram of ``|x|`` (symmetric
    scheme), one of the positive values and one of the negated negative values (asymmetric
    scheme, each side calibrated on its own), and the sum of ``x`` per channel along
    ``channel_axis`` (bias correction; None: no channel statistics)."""

    channel_axis: int | None = None
    magnitude: TensorStatistics = field(default_factory=TensorStatistics)
    positive: TensorStatistics = field(default_factory=TensorStatistics)
    negative: TensorStatistics = field(default_factory=TensorStatistics)
    channel_sum: np.ndarray | None = None
    channel_count: int = 0

    def update(self, x: np.ndarray) -> None:
        """Add one batch of values."""
        x = np.asarray(x, dtype=np.float32)
        flat = x.ravel()
        self.magnitude.update(flat)
        self.positive.update(flat[flat > 0])
        self.negative.update(-flat[flat < 0])
        if self.channel_axis is None or x.ndim == 0:
            return
        axis = self.channel_axis % x.ndim
        per_channel = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        sums = per_channel.sum(axis=1, dtype=np.float64)
        if self.channel_sum is None:
            self.channel_sum = sums
        elif self.channel_sum.shape == sums.shape:
            self.channel_sum += sums
        else:  # the channel count changed between batches: no usable means
            self.channel_axis = None
            self.channel_sum = None
            return
        self.channel_count += per_channel.shape[1]

    @property
    def channel_mean(self) -> np.ndarray | None:
        if self.channel_sum is None or self.channel_count == 0:
            return None
        return self.channel_sum / self.channel_count


def amax_minmax(stats: TensorStatistics) -> float:
    """The absolute maximum seen."""
    return stats.amax


def amax_percentile(stats: TensorStatistics, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile`` of ``|x|`` (upper edge of the bin where the cumulative count crosses it)."""
    total = stats.counts.sum()
    if total == 0:
        return stats.amax
    cdf = np.cumsum(stats.counts) / total
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return min(stats.amax, (index + 1) * stats.bin_width)


def _kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def amax_entropy(stats: TensorStatistics, levels: int = QUANT_LEVELS, stride: int = 1) -> float:
    """TensorRT's entropy calibration: for every candidate threshold bin ``i`` (from ``levels``
    to the histogram's end), clip the histogram at ``i`` (outliers added to the last bin), quantize
    it to ``levels`` buckets (each bucket's mass spread over its non-empty bins), and keep the
    threshold with the smallest KL(reference || quantized)."""
    counts = stats.counts.astype(np.float64)
    # The exact zeros of a ReLU output pile up in bin 0; left alone, that spike dominates the
    # divergence and drives the threshold far too low. As TensorRT's reference implementation
    # (pytorch-quantization) does, bin 0 counts like its neighbour.
    if counts.size > 1:
        counts[0] = counts[1]
    last = int(np.nonzero(counts)[0][-1]) + 1 if counts.any() else 0
    if last <= levels:
        return stats.amax
    best_kl, best_i = math.inf, last
    for i in range(levels, last + 1, stride):
        reference = counts[:i].copy()
        reference[i - 1] += counts[i:].sum()
        nonzero = counts[:i] != 0
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        bucket = np.searchsorted(edges[1:], np.arange(i), side="right")
        mass = np.bincount(bucket, weights=counts[:i], minlength=levels)
        used = np.bincount(bucket, weights=nonzero.astype(np.float64), minlength=levels)
        per_bin = np.divide(mass, used, out=np.zeros_like(mass), where=used > 0)
        quantized = per_bin[bucket]
        quantized[~nonzero] = 0.0
        if quantized.sum() == 0:
            continue
        # Bins the reference has but the quantized lacks (the outlier bin) get a tiny mass.
        quantized[(reference > 0) & (quantized == 0)] = 1e-4
        kl = _kl_divergence(reference, quantized)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return min(stats.amax, best_i * stats.bin_width)


def amax_mse(stats: TensorStatistics, candidates: int = 256, levels: int = QUANT_LEVELS) -> float:
    """The threshold minimizing the expected squared error of a quantization with ``levels``
    levels from 0 to the threshold (128: symmetric int8), computed from the histogram (each
    bin's values at its centre)."""
    counts = stats.counts.astype(np.float64)
    if counts.sum() == 0:
        return stats.amax
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * stats.bin_width
    best_err, best_amax = math.inf, stats.amax
    for amax in np.linspace(stats.amax / candidates, stats.amax, candidates):
        step = amax / (levels - 1)
        q = np.clip(np.rint(centres / step), 0, levels - 1) * step
        err = float(np.dot(counts, (centres - q) ** 2))
        if err < best_err:
            best_err, best_amax = err, float(amax)
    return best_amax


def calibrator_function(
    name: str, percentile: float = DEFAULT_PERCENTILE, levels: int = QUANT_LEVELS
) -> Callable[[TensorStatistics], float]:
    """The amax rule named ``name`` (one of :data:`CALIBRATORS`) for a quantization with
    ``levels`` levels between 0 and the threshold (128 for one side of int8, 256 for uint8)."""
    if name == "minmax":
        return amax_minmax
    if name == "percentile":
        return lambda stats: amax_percentile(stats, percentile)
    if name == "entropy":
        return lambda stats: amax_entropy(stats, levels)
    if name == "mse":
        return lambda stats: amax_mse(stats, levels=levels)
    raise CalibrationError(f"unknown calibrator {name!r}; choose from {', '.join(CALIBRATORS)}")


@dataclass(frozen=True)
class CalibratorSpec:
    """A calibrator and the activation scheme: ``NAME[:OPTION,...]`` (see the module doc)."""

    name: str = DEFAULT_CALIBRATOR
    symmetric: bool = False
    bias_correction: bool = True
    gptq: bool = DEFAULT_GPTQ

    @staticmethod
    def parse(text: str) -> CalibratorSpec:
        name, _, rest = str(text).partition(":")
        name = name.strip().lower()
        if name not in CALIBRATORS:
            raise CalibrationError(f"unknown calibrator {name!r}; choose from {', '.join(CALIBRATORS)}")
        options = [o.strip().lower() for o in rest.split(",") if o.strip()]
        unknown = [o for o in options if o not in CALIBRATOR_OPTIONS]
        if unknown:
            raise CalibrationError(
                f"unknown calibrator option(s) {unknown}; choose from {', '.join(CALIBRATOR_OPTIONS)}"
            )
        if "gptq" in options and "no-gptq" in options:
            raise CalibrationError("calibrator options 'gptq' and 'no-gptq' contradict each other")
        gptq = "gptq" in options or (DEFAULT_GPTQ and "no-gptq" not in options)
        return CalibratorSpec(name, "symmetric" in options, "no-bias-correction" not in options, gptq)

    def __str__(self) -> str:
        """The canonical spec: only the options that differ from the defaults."""
        gptq_option = "no-gptq" if DEFAULT_GPTQ else "gptq"
        options = [
            o
            for o, on in (
                ("symmetric", self.symmetric),
                ("no-bias-correction", not self.bias_correction),
                (gptq_option, self.gptq != DEFAULT_GPTQ),
            )
            if on
        ]
        return self.name + (":" + ",".join(options) if options else "")


def tensor_range(
    stats: RangeStatistics, spec: CalibratorSpec, percentile: float = DEFAULT_PERCENTILE
) -> tuple[float, float]:
    """The calibrated ``(lo, hi)`` of a tensor: ``(-amax, amax)`` in the symmetric scheme, else
    each side calibrated on its own (``lo = 0`` for a tensor never seen negative)."""
    if spec.symmetric:
        amax = float(calibrator_function(spec.name, percentile)(stats.magnitude))
        return -amax, amax
    # The 256 uint8 codes are shared by the two sides in proportion to their ranges (a HardSwish
    # output, [-0.375, 10], gives almost all of them to its positive side): the level-based
    # calibrators (entropy, MSE) judge each side with the resolution it will really get.
    total = stats.positive.amax + stats.negative.amax
    levels = 2 * QUANT_LEVELS
    hi = lo = 0.0
    if stats.positive.amax > 0:
        share = max(2, round(levels * stats.positive.amax / total))
        hi = float(calibrator_function(spec.name, percentile, share)(stats.positive))
    if stats.negative.amax > 0:
        share = max(2, round(levels * stats.negative.amax / total))
        lo = -float(calibrator_function(spec.name, percentile, share)(stats.negative))
    return lo, hi


def collect_statistics(
    graph: Graph,
    tensors: list[str],
    batches: Iterable[Mapping[str, np.ndarray]],
    channel_axes: Mapping[str, int | None] | None = None,
) -> tuple[dict[str, RangeStatistics], int]:
    """Run ``graph`` (an FP32 engine of it, see :mod:`observe`) over ``batches`` and gather
    statistics of ``tensors`` (channel means along ``channel_axes[t]`` where given); returns
    them and the number of samples seen."""
    from farm.compiler.precision.observe import GraphRunner

    input_axes = batch_axes(graph, graph.inputs)
    axes = channel_axes or {}
    stats = {t: RangeStatistics(axes.get(t)) for t in tensors}
    samples = 0
    runner: GraphRunner | None = None
    for feeds in batches:
        if runner is None:
            runner = GraphRunner(
                graph, tensors, max_batch=max(batch_size(feeds, input_axes), 1), example=feeds
            )
        values = runner.run(feeds)
        for name in tensors:
            stats[name].update(values[name])
        samples += batch_size(feeds, input_axes)
    if samples == 0:
        raise CalibrationError("the calibration data is empty")
    return stats, samples


def layer_signature(graph: Graph, tensors: list[str]) -> str:
    """What a calibration cache depends on: the calibrated tensor names and the graph's name."""
    text = json.dumps([graph.name, sorted(tensors)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CalibrationResult:
    """amax, range ``[lo, hi]`` and channel means per tensor, with how they were obtained.
    ``calibrator`` is the spec (``"entropy"``, ``"entropy:symmetric"``...)."""

    calibrator: str
    amax: dict[str, float]
    samples: int
    signature: str
    from_cache: bool = False
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    means: dict[str, list[float]] = field(default_factory=dict)
    rounding: dict[str, dict[str, Any]] = field(default_factory=dict)  # GPTQ, per layer (see gptq)

    @property
    def spec(self) -> CalibratorSpec:
        return CalibratorSpec.parse(self.calibrator)

    def range_of(self, tensor: str) -> tuple[float, float]:
        """``(lo, hi)`` of ``tensor`` (symmetric ``(-amax, amax)`` when no range was stored)."""
        if tensor in self.ranges:
            return self.ranges[tensor]
        return -self.amax[tensor], self.amax[tensor]

    def mean_of(self, tensor: str) -> np.ndarray | None:
        """The per-channel mean of ``tensor``, or None."""
        mean = self.means.get(tensor)
        return None if mean is None else np.asarray(mean, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "calibrator": self.calibrator,
            "samples": self.samples,
            "signature": self.signature,
            "amax": self.amax,
            "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ranges.items()},
            "means": self.means,
            "gptq": self.rounding,
        }


def read_cache(path: str | os.PathLike[str]) -> CalibrationResult | None:
    """The calibration cache at ``path``, or None when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != CACHE_FORMAT or data.get("version") not in (1, 2, CACHE_VERSION):
            raise CalibrationError(f"{path} is not a calibration cache of version {CACHE_VERSION}")
        calibrator = data["calibrator"]
        if data["version"] == 1:  # amax only: the symmetric scheme without bias correction
            calibrator = str(CalibratorSpec(calibrator, symmetric=True, bias_correction=False, gptq=False))
        elif data["version"] == 2:  # before GPTQ: round-to-nearest weights
            calibrator = str(dataclasses.replace(CalibratorSpec.parse(calibrator), gptq=False))
        return CalibrationResult(
            calibrator, {k: float(v) for k, v in data["amax"].items()}, int(data["samples"]),
            data["signature"], from_cache=True,
            ranges={k: (float(v[0]), float(v[1])) for k, v in data.get("ranges", {}).items()},
            means={k: [float(x) for x in v] for k, v in data.get("means", {}).items()},
            rounding={str(k): dict(v) for k, v in data.get("gptq", {}).items()},
        )  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"calibration cache {path} is unreadable: {exc}") from exc


def write_cache(path: str | os.PathLike[str], result: CalibrationResult) -> None:
    """Write ``result`` to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.to_json(), indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def calibrate(
    graph: Graph,
    tensors: list[str],
    source: CalibrationSource | None,
    *,
    calibrator: str = DEFAULT_CALIBRATOR,
    cache: str | os.PathLike[str] | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    batch: int = DEFAULT_BATCH,
    limit: int | None = None,
    channel_axes: Mapping[str, int | None] | None = None,
) -> CalibrationResult:
    """amax, range and channel means (along ``channel_axes``) for every tensor in ``tensors``:
    from ``cache`` when it matches (same calibrator spec and layers), else by running the
    reference over ``source`` (and writing ``cache``)."""
    spec = CalibratorSpec.parse(calibrator)  # validates the name before any work
    calibrator = str(spec)
    signature = layer_signature(graph, tensors)
    if cache is not None:
        cached = read_cache(cache)
        if cached is not None and cached.calibrator == calibrator and set(tensors) <= set(cached.amax):
            return cached
        if cached is not None and source is None:
            raise CalibrationError(
                f"calibration cache {cache} was made with {cached.calibrator!r} for other layers; "
                f"give calibration data to recalibrate"
            )
    if source is None:
        raise CalibrationError("INT8 needs calibration data (--calib samples.npz) or a calibration cache")
    rule = calibrator_function(spec.name, percentile)
    input_axes = batch_axes(graph, graph.inputs)
    stats, samples = collect_statistics(
        graph, tensors, calibration_batches(source, graph.inputs, batch, limit, input_axes), channel_axes
    )
    result = CalibrationResult(
        calibrator, {t: float(rule(s.magnitude)) for t, s in stats.items()}, samples, signature,
        ranges={t: tensor_range(s, spec, percentile) for t, s in stats.items()},
        means={t: [float(v) for v in m] for t, s in stats.items() if (m := s.channel_mean) is not None},
    )  # fmt: skip
    if cache is not None:
        write_cache(cache, result)
    return result
