"""Accuracy metrics: an engine's outputs against a reference's (ONNX Runtime in FP32).

Per output: max absolute error, relative L2 error, cosine similarity, SNR in dB and, for
classifier-shaped outputs (``[batch, classes]``), top-1 and top-5 agreement. The reduced-precision
work adds budgets on top of these; keep this module free of anything but the metrics and the
reference runner.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class OutputAccuracy:
    """How close one output is to the reference."""

    name: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    cosine: float
    snr_db: float
    top1: float | None = None  # fraction of rows whose argmax agrees
    top5: float | None = None  # fraction of rows whose reference argmax is in our top 5
    task_top1: float | None = None  # fraction of rows whose argmax is the label (labels given)
    task_top5: float | None = None  # fraction of rows whose label is in our top 5 (labels given)

    def to_json(self) -> dict[str, Any]:
        """JSON-able (infinite SNR, i.e. identical outputs, becomes None)."""
        data = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def is_classifier_output(array: np.ndarray) -> bool:
    """A ``[batch, classes]`` float output with at least two classes (logits or probabilities)."""
    return array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind == "f"


def top_k_agreement(got: np.ndarray, want: np.ndarray, k: int) -> float:
    """Fraction of rows where the reference's top-1 class is among ``got``'s top ``k``."""
    k = min(k, got.shape[1])
    want_top1 = np.argmax(want, axis=1)
    got_topk = np.argpartition(-got, k - 1, axis=1)[:, :k] if k > 1 else np.argmax(got, axis=1)[:, None]
    return float(np.mean([w in row for w, row in zip(want_top1, got_topk, strict=True)]))


def task_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows of ``logits`` [batch, classes] whose top ``k`` classes hold the row's label."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {logits.shape[0]} rows")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def compare_arrays(
    name: str, got: np.ndarray, want: np.ndarray, labels: np.ndarray | None = None
) -> OutputAccuracy:
    """Metrics of ``got`` against ``want`` (same shape), computed in float64; with ``labels``
    (one class index per row of a classifier output), also the task accuracy."""
    if got.shape != want.shape:
        raise ValueError(f"output {name!r}: shape {got.shape} differs from the reference's {want.shape}")
    g = np.asarray(got, dtype=np.float64).ravel()
    w = np.asarray(want, dtype=np.float64).ravel()
    diff = g - w
    noise = float(np.dot(diff, diff))
    signal = float(np.dot(w, w))
    norm_g, norm_w = float(np.linalg.norm(g)), math.sqrt(signal)
    if norm_g == 0.0 and norm_w == 0.0:
        cosine = 1.0
    elif norm_g == 0.0 or norm_w == 0.0:
        cosine = 0.0
    else:
        cosine = float(np.dot(g, w) / (norm_g * norm_w))
    result = OutputAccuracy(
        name=name,
        shape=list(want.shape),
        max_abs=float(np.max(np.abs(diff))) if diff.size else 0.0,
        rel_l2=math.sqrt(noise) / norm_w if norm_w > 0 else (0.0 if noise == 0 else math.inf),
        cosine=cosine,
        snr_db=10 * math.log10(signal / noise) if noise > 0 else math.inf,
    )
    if is_classifier_output(np.asarray(want)):
        result.top1 = top_k_agreement(np.asarray(got), np.asarray(want), 1)
        result.top5 = top_k_agreement(np.asarray(got), np.asarray(want), 5)
        if labels is not None:
            result.task_top1 = task_accuracy(np.asarray(got), labels, 1)
            result.task_top5 = task_accuracy(np.asarray(got), labels, 5)
    return result


def compare_outputs(
    got: Mapping[str, np.ndarray],
    want: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray] | None = None,
) -> list[OutputAccuracy]:
    """Metrics for every output of the reference (an output missing from ``got`` is an error);
    ``labels`` maps a classifier output's name to its class labels for task accuracy."""
    missing = [n for n in want if n not in got]
    if missing:
        raise ValueError(f"outputs {missing} are missing (have {sorted(got)})")
    labels = labels or {}
    return [
        compare_arrays(name, np.asarray(got[name]), np.asarray(want[name]), labels.get(name)) for name in want
    ]


def onnxruntime_session(model: str | os.PathLike[str] | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with default options (``threads`` intra-op threads if given)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, str | Path | os.PathLike) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnxruntime_outputs(
    model: str | os.PathLike[str] | bytes, feeds: Mapping[str, np.ndarray], threads: int | None = None
) -> dict[str, np.ndarray]:
    """Run ``model`` once in ONNX Runtime (FP32 reference) and return its outputs by name."""
    session = onnxruntime_session(model, threads)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))
