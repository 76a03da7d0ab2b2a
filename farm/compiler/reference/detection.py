"""Detection post-processing: NonMaxSuppression."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """Boxes as (y1, x1, y2, x2) with y1 <= y2 and x1 <= x2."""
    if center_point_box:
        xc, yc, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1 = np.minimum(boxes[:, 0], boxes[:, 2])
    y2 = np.maximum(boxes[:, 0], boxes[:, 2])
    x1 = np.minimum(boxes[:, 1], boxes[:, 3])
    x2 = np.maximum(boxes[:, 1], boxes[:, 3])
    return np.stack([y1, x1, y2, x2], axis=1)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    top = np.maximum(box[0], others[:, 0])
    left = np.maximum(box[1], others[:, 1])
    bottom = np.minimum(box[2], others[:, 2])
    right = np.minimum(box[3], others[:, 3])
    inter = np.maximum(0, bottom - top) * np.maximum(0, right - left)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _scalar(x: np.ndarray | None, default: float) -> float:
    return default if x is None or x.size == 0 else float(x.reshape(-1)[0])


@op("NonMaxSuppression")
def non_max_suppression(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    boxes, scores = inputs[0], inputs[1]
    padded = list(inputs) + [None] * (5 - len(inputs))
    max_per_class = int(_scalar(padded[2], 0))
    iou_threshold = _scalar(padded[3], 0.0)
    score_threshold = padded[4]
    center = int(node.attr("center_point_box", 0))
    selected: list[tuple[int, int, int]] = []
    if max_per_class <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    for b in range(scores.shape[0]):
        corners = _corners(boxes[b].astype(np.float64), center)
        for c in range(scores.shape[1]):
            class_scores = scores[b, c]
            order = np.argsort(-class_scores, kind="stable")
            if score_threshold is not None and score_threshold.size:
                order = order[class_scores[order] > float(score_threshold.reshape(-1)[0])]
            kept: list[int] = []
            for index in order:
                if len(kept) >= max_per_class:
                    break
                if kept and np.any(_iou(corners[index], corners[kept]) > iou_threshold):
                    continue
                kept.append(int(index))
            selected.extend((b, c, k) for k in kept)
    return np.array(selected, dtype=np.int64).reshape(-1, 3)
