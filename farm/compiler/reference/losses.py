"""Loss ops that converters keep in inference graphs: NegativeLogLikelihoodLoss and
SoftmaxCrossEntropyLoss (with weights, ignore_index and every reduction)."""

from __future__ import annotations

import numpy as np

from farm.compiler.ir.graph import Node
from farm.compiler.reference.registry import Context, Inputs, op


def negative_log_likelihood(
    log_prob: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int | None, reduction: str
) -> np.ndarray:
    """loss[n, d...] = -log_prob[n, target[n, d...], d...] * weight[target]; ignored targets count 0."""
    target = target.astype(np.int64)
    ignored = target == ignore_index if ignore_index is not None else np.zeros(target.shape, bool)
    safe = np.where(ignored, 0, target)
    picked = np.take_along_axis(log_prob, np.expand_dims(safe, 1), axis=1)[:, 0]
    weights = weight[safe] if weight is not None else np.ones(target.shape, log_prob.dtype)
    weights = np.where(ignored, 0, weights).astype(log_prob.dtype)
    loss = -picked * weights
    if reduction == "none":
        return loss.astype(log_prob.dtype)
    if reduction == "sum":
        return np.asarray(loss.sum(), dtype=log_prob.dtype)
    total = weights.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(loss.sum() / total if total != 0 else 0.0, dtype=log_prob.dtype)


@op("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(node: Node, inputs: Inputs, ctx: Context) -> np.ndarray:
    weight = inputs[2] if len(inputs) > 2 else None
    return negative_log_likelihood(
        inputs[0], inputs[1], weight, node.attr("ignore_index", None), node.attr("reduction", "mean")
    )


@op("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(node: Node, inputs: Inputs, ctx: Context) -> list[np.ndarray]:
    scores, labels = inputs[0], inputs[1]
    weight = inputs[2] if len(inputs) > 2 else None
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_prob = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(scores.dtype)
    loss = negative_log_likelihood(
        log_prob, labels, weight, node.attr("ignore_index", None), node.attr("reduction", "mean")
    )
    return [loss, log_prob]
