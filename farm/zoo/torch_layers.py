"""PyTorch modules as the TorchScript ONNX exporter (torch 2.13, ``dynamo=False``) writes them.

Each function adds to an :class:`OnnxGraphBuilder` the exact node pattern that exporting the named
``torch.nn`` module produces, in the caller's current module scope, with weights drawn the way
``torch.nn`` initializes them (then perturbed where a freshly initialized module would be an
identity, e.g. LayerNorm). The patterns were read off real exports kept in
``tests/fixtures/torch/`` (see the README there). Opset differences follow the exporter:
HardSwish needs opset 14, LayerNormalization 17 and Gelu 20; below those the decomposed forms
the exporter uses are emitted instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from farm.zoo.onnx_builder import ONNX_DTYPES, OnnxGraphBuilder

FLOAT32_MIN = float(np.finfo(np.float32).min)
ATTENTION_GAIN = 2.0  # query/key weight gain: attention as peaked as a trained model's
CLASSIFIER_GAIN = 4.0  # recurrent heads: confident per-frame classes instead of near-uniform ones
BATCHNORM_MODES = ("keep", "fold")
LAYERNORM_MODES = ("auto", "fused", "decomposed")
BATCHNORM_EPS = 1e-5
BATCHNORM_MOMENTUM = 0.9  # the exporter writes 1 - torch's momentum (0.1)


# ------------------------------------------------------------------------------ model options


def folds_batchnorm(mode: str) -> bool:
    """Whether a ``batchnorm`` option asks for BatchNorm folded into the convs (``"fold"``) or
    kept as ``BatchNormalization`` nodes (``"keep"``)."""
    if mode not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, not {mode!r}")
    return mode == "fold"


def decomposes_layernorm(mode: str, opset: int) -> bool:
    """Whether a ``layernorm`` option means the decomposed form: ``"decomposed"``, or ``"auto"``
    below opset 17 (where the exporter cannot write LayerNormalization)."""
    if mode not in LAYERNORM_MODES:
        raise ValueError(f"layernorm must be one of {LAYERNORM_MODES}, not {mode!r}")
    return mode == "decomposed" or (mode == "auto" and opset < 17)


# ------------------------------------------------------------------------------ dense


def linear(
    b: OnnxGraphBuilder, x: str, in_features: int, out_features: int, *, input_rank: int, gain: float = 1.0
) -> str:
    """``nn.Linear``: ``Gemm(transB=1)`` on a 2-D input, else ``MatMul`` by the transposed weight
    (an ``onnx::MatMul_<n>`` initializer) then ``Add(bias, product)`` — bias first. The dynamo
    exporter writes ``Gemm(transA=0, transB=1)`` and ``Add(product, bias)``.

    ``gain`` scales torch's default weight range (query/key projections use it to give the
    attention the peaked distributions of a trained model instead of a near-uniform one).
    """
    bound = 1.0 / math.sqrt(in_features)
    weight = b.uniform((out_features, in_features), -bound * gain, bound * gain)
    bias = b.uniform((out_features,), -bound, bound)
    if input_rank == 2:
        gemm_inputs = [x, b.param(b.param_name("weight"), weight), b.param(b.param_name("bias"), bias)]
        if b.dynamo:
            return b.op("Gemm", gemm_inputs, alpha=1.0, beta=1.0, transA=0, transB=1)
        return b.op("Gemm", gemm_inputs, alpha=1.0, beta=1.0, transB=1)
    product = b.op("MatMul", [x, b.derived_param("MatMul", np.ascontiguousarray(weight.T))])
    bias_name = b.param(b.param_name("bias"), bias)
    # TorchScript adds the bias first, dynamo second
    return b.op("Add", [product, bias_name] if b.dynamo else [bias_name, product])


# ------------------------------------------------------------------------------ convolution


def conv2d(
    b: OnnxGraphBuilder,
    x: str,
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    groups: int = 1,
    bias: bool = True,
    weight_std: float | None = None,
) -> str:
    """``nn.Conv2d`` (square kernel): one ``Conv`` with explicit dilations, group, pads, strides.

    Weights follow torch's default (uniform, bound 1/sqrt(fan_in)) unless ``weight_std`` asks
    for a normal draw (torchvision's kaiming init for ReLU networks).
    """
    pad = (kernel - 1) // 2 if padding is None else padding
    fan_in = in_channels // groups * kernel * kernel
    shape = (out_channels, in_channels // groups, kernel, kernel)
    if weight_std is None:
        bound = 1.0 / math.sqrt(fan_in)
        weight = b.uniform(shape, -bound, bound)
    else:
        weight = b.normal(shape, weight_std)
    inputs = [x, b.param(b.param_name("weight"), weight)]
    if bias:
        bound = 1.0 / math.sqrt(fan_in)
        inputs.append(b.param(b.param_name("bias"), b.uniform((out_channels,), -bound, bound)))
    return conv_node(b, inputs, kernel, stride=stride, pad=pad, groups=groups)


def conv_node(b: OnnxGraphBuilder, inputs: list[str], kernel: int, *, stride: int, pad: int, groups: int) -> str:
    """The ``Conv`` node with every attribute explicit (dynamo also writes ``auto_pad="NOTSET"``)."""
    attrs: dict[str, Any] = {
        "dilations": [1, 1],
        "group": groups,
        "kernel_shape": [kernel, kernel],
        "pads": [pad, pad, pad, pad],
        "strides": [stride, stride],
    }
    if b.dynamo:
        attrs["auto_pad"] = "NOTSET"
    return b.op("Conv", inputs, **attrs)


def batchnorm_statistics(b: OnnxGraphBuilder, channels: int, gamma_range: tuple[float, float]) -> dict[str, np.ndarray]:
    """Seeded BatchNorm parameters and running statistics that look trained (not the identity)."""
    return {
        "weight": b.uniform((channels,), *gamma_range),
        "bias": b.uniform((channels,), -0.1, 0.1),
        "running_mean": b.uniform((channels,), -0.1, 0.1),
        "running_var": b.uniform((channels,), 0.7, 1.3),
    }


def batchnorm2d(b: OnnxGraphBuilder, x: str, stats: dict[str, np.ndarray]) -> str:
    """``nn.BatchNorm2d`` in eval mode exported with ``training=TrainingMode.PRESERVE``:
    ``BatchNormalization(epsilon=1e-5, momentum=0.9, training_mode=0)`` (no training_mode below
    opset 14)."""
    names = [b.param(b.param_name(key), stats[key]) for key in ("weight", "bias", "running_mean", "running_var")]
    if b.opset >= 14:
        return b.op("BatchNormalization", [x, *names], epsilon=BATCHNORM_EPS, momentum=BATCHNORM_MOMENTUM,
                    training_mode=0)
    return b.op("BatchNormalization", [x, *names], epsilon=BATCHNORM_EPS, momentum=BATCHNORM_MOMENTUM)


def fold_batchnorm(
    weight: np.ndarray, bias: np.ndarray | None, stats: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with an eval-mode BatchNorm folded in, as the exporter's eval peephole
    does: ``w * g / sqrt(v + eps)`` per output channel, ``(b - m) * g / sqrt(v + eps) + beta``."""
    scale = stats["weight"] / np.sqrt(stats["running_var"] + BATCHNORM_EPS)
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    base = np.zeros_like(stats["running_mean"]) if bias is None else bias
    folded_bias = (base - stats["running_mean"]) * scale + stats["bias"]
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)


def conv_bn(
    b: OnnxGraphBuilder,
    x: str,
    in_channels: int,
    out_channels: int,
    kernel: int,
    *,
    conv_scope: tuple[str, ...],
    bn_scope: tuple[str, ...],
    stride: int = 1,
    groups: int = 1,
    fold: bool = False,
    gamma_range: tuple[float, float] = (0.8, 1.2),
) -> str:
    """A bias-free ``Conv2d`` followed by ``BatchNorm2d``.

    ``fold=False`` keeps ``Conv → BatchNormalization`` (an export with
    ``training=TrainingMode.PRESERVE``, or most non-PyTorch converters); ``fold=True`` writes the
    default TorchScript eval export: one ``Conv`` whose weight and bias (``onnx::Conv_<n>``)
    already carry the BatchNorm. The dynamo exporter always folds (``<conv>.weight_bias``).
    """
    fan_in = in_channels // groups * kernel * kernel
    # torchvision's kaiming_normal_(mode="fan_out") is too hot without trained statistics; a
    # fan-in normal keeps activations O(1) through the network.
    weight_std = math.sqrt(2.0 / fan_in)
    if not fold:
        if b.dynamo:
            raise ValueError("the dynamo exporter folds BatchNorm into the convs; use batchnorm='fold'")
        with b.module(*conv_scope):
            y = conv2d(b, x, in_channels, out_channels, kernel, stride=stride, groups=groups,
                       bias=False, weight_std=weight_std)
        with b.module(*bn_scope):
            return batchnorm2d(b, y, batchnorm_statistics(b, out_channels, gamma_range))
    weight = b.normal((out_channels, in_channels // groups, kernel, kernel), weight_std)
    stats = batchnorm_statistics(b, out_channels, gamma_range)
    folded_weight, folded_bias = fold_batchnorm(weight, None, stats)
    with b.module(*conv_scope):
        if b.dynamo:  # the folded parameters keep the conv's name: <conv>.weight, <conv>.weight_bias
            params = [b.param(b.param_name("weight"), folded_weight), b.param(b.param_name("weight_bias"), folded_bias)]
        else:
            params = [b.derived_param("Conv", folded_weight), b.derived_param("Conv", folded_bias)]
        return conv_node(b, [x, *params], kernel, stride=stride, pad=(kernel - 1) // 2, groups=groups)


# ------------------------------------------------------------------------------ activations


def relu(b: OnnxGraphBuilder, x: str) -> str:
    """``nn.ReLU``: ``Relu``."""
    return b.op("Relu", [x])


def relu6(b: OnnxGraphBuilder, x: str) -> str:
    """``nn.ReLU6``: ``Clip(x, min, max)`` with ``Constant`` scalars 0.0 and 6.0 (dynamo: the
    shared initializers ``min_val_cast`` and ``max_val_cast``)."""
    if b.dynamo:
        return b.op("Clip", [x, b.named_const("min_val_cast", 0.0), b.named_const("max_val_cast", 6.0)])
    low = b.const(0.0)
    high = b.const(6.0)
    return b.op("Clip", [x, low, high])


def hardsigmoid(b: OnnxGraphBuilder, x: str) -> str:
    """``nn.Hardsigmoid``: ``HardSigmoid(alpha=1/6)`` (beta left at its default 0.5; dynamo
    writes ``beta=0.5``)."""
    if b.dynamo:
        return b.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)
    return b.op("HardSigmoid", [x], alpha=1.0 / 6.0)


def hardswish(b: OnnxGraphBuilder, x: str) -> str:
    """``nn.Hardswish``: ``HardSwish`` from opset 14, ``x * HardSigmoid(x)`` below."""
    if b.opset >= 14:
        return b.op("HardSwish", [x])
    return b.op("Mul", [x, b.op("HardSigmoid", [x], alpha=1.0 / 6.0)])


def gelu(b: OnnxGraphBuilder, x: str, approximate: str = "none") -> str:
    """``nn.GELU``: the ``Gelu`` op from opset 20; below, the exporter's decomposition.

    erf form: ``Mul(Mul(x, Add(Erf(Div(x, 1.4142135)), 1.0)), 0.5)`` (dynamo:
    ``Mul(x, Mul(0.5, Add(Erf(Div(x, 1.4142135)), 1.0)))``);
    tanh form: ``Mul(0.5, Mul(x, Add(1.0, Tanh(Mul(0.7978846, Add(x, Mul(0.044715, Mul(x, Mul(x, x)))))))))``.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"GELU approximate must be 'none' or 'tanh', not {approximate!r}")
    if b.opset >= 20:
        return b.op("Gelu", [x], approximate=approximate)
    if approximate == "none":
        erf = b.op("Erf", [b.op("Div", [x, b.const(math.sqrt(2.0))])])
        if b.dynamo:
            return b.op("Mul", [x, b.op("Mul", [b.const(0.5), b.op("Add", [erf, b.const(1.0)])])])
        return b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(1.0)])]), b.const(0.5)])
    cube = b.op("Mul", [x, b.op("Mul", [x, x])])
    inner = b.op("Add", [x, b.op("Mul", [b.const(0.044715), cube])])
    tanh = b.op("Tanh", [b.op("Mul", [b.const(math.sqrt(2.0 / math.pi)), inner])])
    return b.op("Mul", [b.const(0.5), b.op("Mul", [x, b.op("Add", [b.const(1.0), tanh])])])


# ------------------------------------------------------------------------------ pooling


def max_pool(b: OnnxGraphBuilder, x: str, kernel: tuple[int, int], stride: tuple[int, int], pad: int) -> str:
    """``nn.MaxPool2d``: ``MaxPool(ceil_mode=0, dilations, kernel_shape, pads, strides)`` (dynamo
    adds ``auto_pad="NOTSET"`` and ``storage_order=0``)."""
    attrs: dict[str, Any] = {
        "ceil_mode": 0,
        "dilations": [1, 1],
        "kernel_shape": list(kernel),
        "pads": [pad] * 4,
        "strides": list(stride),
    }
    if b.dynamo:
        attrs |= {"auto_pad": "NOTSET", "storage_order": 0}
    return b.op("MaxPool", [x], **attrs)


def global_avg_pool(b: OnnxGraphBuilder, x: str) -> str:
    """``nn.AdaptiveAvgPool2d(1)``: ``GlobalAveragePool`` (dynamo:
    ``ReduceMean(axes=[-1, -2], keepdims=1, noop_with_empty_axes=0)``)."""
    if b.dynamo:
        return b.op("ReduceMean", [x, b.const([-1, -2], "int64")], keepdims=1, noop_with_empty_axes=0)
    return b.op("GlobalAveragePool", [x])


def flatten(b: OnnxGraphBuilder, x: str, features: int) -> str:
    """``torch.flatten(x, 1)`` of a ``[N, C, 1, 1]`` tensor: ``Flatten(axis=1)`` (dynamo:
    ``Reshape(x, [-1, C], allowzero=1)``)."""
    if b.dynamo:
        return reshape(b, x, b.const([-1, features], "int64"))
    return b.op("Flatten", [x], axis=1)


# ------------------------------------------------------------------------------ normalization


def layer_norm(b: OnnxGraphBuilder, x: str, dim: int, *, eps: float, decomposed: bool) -> str:
    """``nn.LayerNorm`` over the last axis, with trained-looking (non-identity) weights.

    ``decomposed=False``: ``LayerNormalization(axis=-1, epsilon)`` (opset >= 17; dynamo adds
    ``stash_type=1``).
    ``decomposed=True``: what the exporter writes below opset 17:
    ``ReduceMean → Sub → Pow(2) → ReduceMean → Add(eps) → Sqrt → Div → Mul(weight) → Add(bias)``.
    """
    weight = b.param(b.param_name("weight"), b.uniform((dim,), 0.8, 1.2))
    bias = b.param(b.param_name("bias"), b.uniform((dim,), -0.1, 0.1))
    if not decomposed:
        if b.opset < 17:
            raise ValueError(f"LayerNormalization needs opset >= 17 (got {b.opset}); use the decomposed form")
        if b.dynamo:
            return b.op("LayerNormalization", [x, weight, bias], axis=-1, epsilon=eps, stash_type=1)
        return b.op("LayerNormalization", [x, weight, bias], axis=-1, epsilon=eps)
    mean = reduce_mean_last(b, x)
    centered = b.op("Sub", [x, mean])
    variance = reduce_mean_last(b, b.op("Pow", [centered, b.const(2.0)]))
    std = b.op("Sqrt", [b.op("Add", [variance, b.const(eps)])])
    normalized = b.op("Div", [centered, std])
    return b.op("Add", [b.op("Mul", [normalized, weight]), bias])


def reduce_mean_last(b: OnnxGraphBuilder, x: str) -> str:
    """``x.mean(-1, keepdim=True)``: ReduceMean with ``axes`` an attribute (< 18) or input (>= 18)."""
    if b.opset >= 18:
        return b.op("ReduceMean", [x, b.const([-1], "int64")], keepdims=1)
    return b.op("ReduceMean", [x], axes=[-1])


# ------------------------------------------------------------------------------ shapes


def dim_of(b: OnnxGraphBuilder, x: str, index: int) -> str:
    """``x.size(index)`` traced: ``Shape → Gather(Constant index, axis=0)`` (a 0-d int64)."""
    shape = b.op("Shape", [x])
    return b.op("Gather", [shape, b.const(index, "int64")], axis=0)


def dim_slice(b: OnnxGraphBuilder, x: str, index: int) -> str:
    """``x.size(index)`` as the dynamo exporter writes it: ``Shape(start=i, end=i+1)``, already 1-D."""
    return b.op("Shape", [x], start=index, end=index + 1)


def as_shape_entry(b: OnnxGraphBuilder, scalar: str) -> str:
    """A traced size made 1-D for a Concat: ``Unsqueeze(axes=onnx::Unsqueeze_<n> [0])``."""
    return b.op("Unsqueeze", [scalar, b.anonymous_const([0], "int64", "Unsqueeze")])


def reshape(b: OnnxGraphBuilder, x: str, shape: str) -> str:
    """``Tensor.view``/``reshape``: ``Reshape`` with ``allowzero=0`` from opset 14 (dynamo:
    ``allowzero=1``)."""
    if b.dynamo:
        return b.op("Reshape", [x, shape], allowzero=1)
    if b.opset >= 14:
        return b.op("Reshape", [x, shape], allowzero=0)
    return b.op("Reshape", [x, shape])


def scalar_tensor(value: float, dtype: str) -> onnx.TensorProto:
    """A one-element tensor, the ``value`` attribute of a ``ConstantOfShape``."""
    return numpy_helper.from_array(np.array([value], dtype=dtype))


def cast(b: OnnxGraphBuilder, x: str, dtype: str) -> str:
    """``Tensor.to(dtype)``: ``Cast(to=...)``."""
    return b.op("Cast", [x], to=ONNX_DTYPES[dtype])


# ------------------------------------------------------------------------------ recurrent


def _rnn_weights(
    b: OnnxGraphBuilder, gates: int, input_size: int, hidden: int, directions: int
) -> tuple[str, str, str]:
    """ONNX W [dirs, gates*H, in], R [dirs, gates*H, H], B [dirs, 2*gates*H] drawn as torch draws
    its RNN weights (uniform, bound 1/sqrt(H)); the exporter names them ``onnx::<LSTM|GRU>_<n>``
    (gates already in ONNX order, so there is nothing to reorder)."""
    kind = "LSTM" if gates == 4 else "GRU"
    bound = 1.0 / math.sqrt(hidden)
    w = b.uniform((directions, gates * hidden, input_size), -bound, bound)
    r = b.uniform((directions, gates * hidden, hidden), -bound, bound)
    bias = b.uniform((directions, 2 * gates * hidden), -bound, bound)
    return b.derived_param(kind, w), b.derived_param(kind, r), b.derived_param(kind, bias)


def _slice_layer_state(b: OnnxGraphBuilder, state: str, start: int, stop: int) -> str:
    """``state[start:stop]`` along axis 0, as the exporter slices one layer's initial state."""
    axes = b.const([0], "int64")
    starts = b.const([start], "int64")
    ends = b.const([stop], "int64")
    return b.op("Slice", [state, starts, ends, axes])


def lstm(
    b: OnnxGraphBuilder, x: str, input_size: int, hidden: int, *, num_layers: int, bidirectional: bool
) -> str:
    """``nn.LSTM`` (sequence first, zero initial state) over ``x [T, B, C]``; returns ``[T, B, dirs*H]``.

    Pattern: zero states from ``Shape → Gather(1) → Unsqueeze → Concat([L*dirs], B, [H]) →
    ConstantOfShape``; per layer ``Slice`` of h0 and c0, ``LSTM``, ``Transpose(0, 2, 1, 3)`` and
    ``Reshape(0, 0, -1)`` to merge the directions.
    """
    directions = 2 if bidirectional else 1
    batch = dim_of(b, x, 1)
    state_shape = b.op(
        "Concat",
        [b.const([num_layers * directions], "int64"), as_shape_entry(b, batch), b.const([hidden], "int64")],
        axis=0,
    )
    zeros = b.op("ConstantOfShape", [state_shape], value=scalar_tensor(0.0, "float32"))
    for layer in range(num_layers):
        first, last = layer * directions, (layer + 1) * directions
        h0 = _slice_layer_state(b, zeros, first, last)
        c0 = _slice_layer_state(b, zeros, first, last)
        w, r, bias = _rnn_weights(b, 4, input_size if layer == 0 else directions * hidden, hidden, directions)
        attrs: dict[str, Any] = {"hidden_size": hidden}
        if bidirectional:
            attrs["direction"] = "bidirectional"
        y = b.op_multi("LSTM", [x, w, r, bias, "", h0, c0], num_outputs=3, **attrs)[0]
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        x = reshape(b, y, b.const([0, 0, -1], "int64"))
    return x


def gru_with_state(
    b: OnnxGraphBuilder, x: str, h0: str, input_size: int, hidden: int, *, num_layers: int
) -> tuple[str, str]:
    """``nn.GRU(batch_first=True)(x, h0)`` (one direction): returns (``[B, T, H]``, ``h [L, B, H]``).

    Pattern: ``Transpose(1, 0, 2)``; per layer ``Slice`` of h0, ``GRU(linear_before_reset=1)``,
    ``Squeeze(1)`` of the direction axis; ``Transpose(1, 0, 2)`` back; the final states of all
    layers ``Concat``-ed on axis 0.
    """
    x = b.op("Transpose", [x], perm=[1, 0, 2])
    final_states = []
    for layer in range(num_layers):
        layer_h0 = _slice_layer_state(b, h0, layer, layer + 1)
        w, r, bias = _rnn_weights(b, 3, input_size if layer == 0 else hidden, hidden, 1)
        y, y_h = b.op_multi("GRU", [x, w, r, bias, "", layer_h0], num_outputs=2, hidden_size=hidden,
                            linear_before_reset=1)
        x = b.op("Squeeze", [y, b.const([1], "int64")])
        final_states.append(y_h)
    x = b.op("Transpose", [x], perm=[1, 0, 2])
    return x, b.op("Concat", final_states, axis=0)
