"""``vit``: timm's VisionTransformer (eager attention) as the TorchScript exporter writes it.

The pattern, as in ``tests/fixtures/torch/vit_ts17.onnx``: patch ``Conv`` (kernel = stride =
patch), ``flatten(2)`` as ``Shape → Slice → Concat(-1) → Reshape``, ``Transpose(0, 2, 1)``; the cls
token ``Expand``-ed to the batch through ``Shape/Gather/Unsqueeze/Concat/Reshape/ConstantOfShape/
Mul/Equal/Where``, ``Concat(axis=1)`` and ``Add(pos_embed)``. Each pre-LN block: LayerNorm, one
fused ``qkv`` MatMul + Add, ``Reshape(B, N, 3, H, D) → Transpose(2, 0, 3, 1, 4) → Split → Squeeze``
×3, ``MatMul(q, Transpose(k)) → Mul(scale) → Softmax → MatMul → Transpose → Reshape``, proj,
residual ``Add``; LayerNorm, fc1, Erf-GELU, fc2, residual ``Add``. Final LayerNorm,
``Gather(axis=1, 0)`` of the cls token and the head ``Gemm``.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec


def input_specs(image_size: int = 224, **_: object) -> list[InputSpec]:
    """An NCHW RGB image batch."""
    return [InputSpec("input", "float32", ("batch", 3, image_size, image_size), "image")]


class _VitWriter:
    def __init__(self, b: OnnxGraphBuilder, *, dim: int, num_heads: int, mlp_hidden: int, eps: float,
                 decomposed: bool) -> None:
        self.b = b
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.mlp_hidden = mlp_hidden
        self.eps = eps
        self.decomposed = decomposed

    def layer_norm(self, x: str, name: str) -> str:
        """``nn.LayerNorm`` module ``name`` of the current scope."""
        with self.b.module(name):
            return L.layer_norm(self.b, x, self.dim, eps=self.eps, decomposed=self.decomposed)

    def patch_embed(self, x: str, patch: int, num_patches: int) -> str:
        """``proj(x).flatten(2).transpose(1, 2)``."""
        b = self.b
        with b.module("patch_embed"):
            with b.module("proj"):
                x = L.conv2d(b, x, 3, self.dim, patch, stride=patch, padding=0)
            if b.dynamo:
                x = L.reshape(b, x, b.const([-1, self.dim, num_patches], "int64"))
                return b.op("Transpose", [x], perm=[0, 2, 1])
            shape = b.op("Shape", [x])
            axes = b.const([0], "int64")
            starts = b.const([0], "int64")
            ends = b.const([2], "int64")
            leading = b.op("Slice", [shape, starts, ends, axes])
            flat_shape = b.op("Concat", [leading, b.const([-1], "int64")], axis=0)
            x = L.reshape(b, x, flat_shape)
            return b.op("Transpose", [x], perm=[0, 2, 1])

    def prepend_cls_token(self, tokens: str, cls_token: str, batch_size: str | None) -> str:
        """``cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)``, traced (dynamo: expanded to
        ``Concat(batch_size, [1], [1])``)."""
        b = self.b
        if b.dynamo:
            assert batch_size is not None
            one = b.const([1], "int64")
            expanded = b.op("Expand", [cls_token, b.op("Concat", [batch_size, one, one], axis=0)])
            return b.op("Concat", [expanded, tokens], axis=1)
        batch = L.dim_of(b, tokens, 0)
        sizes = b.op(
            "Concat",
            [b.op("Unsqueeze", [batch, b.const([0], "int64")]), b.const([-1], "int64"), b.const([-1], "int64")],
            axis=0,
        )
        sizes = L.reshape(b, sizes, b.const([-1], "int64"))
        # Expand treats -1 as "keep": the exporter rewrites it to 1 with Equal/Where
        ones = b.op("ConstantOfShape", [b.op("Shape", [sizes])], value=L.scalar_tensor(1, "int64"))
        is_keep = b.op("Equal", [sizes, b.op("Mul", [ones, b.const(-1, "int64")])])
        sizes = b.op("Where", [is_keep, ones, sizes])
        expanded = b.op("Expand", [cls_token, sizes])
        return b.op("Concat", [expanded, tokens], axis=1)

    def attention_dynamo(self, x: str, num_tokens: int) -> str:
        """timm ``Attention`` as the dynamo exporter writes it: static reshapes with -1 for the
        batch, and ``unbind`` as three ``Slice → Squeeze``."""
        b = self.b
        with b.module("qkv"):
            qkv = L.linear(b, x, self.dim, 3 * self.dim, input_rank=3, gain=L.ATTENTION_GAIN)
        heads_shape = b.const([-1, num_tokens, 3, self.num_heads, self.head_dim], "int64")
        qkv = b.op("Transpose", [L.reshape(b, qkv, heads_shape)], perm=[2, 0, 3, 1, 4])
        axis = b.const([0], "int64")
        q, k, v = (
            b.op("Squeeze", [b.op("Slice", [qkv, b.const([i], "int64"), b.const([i + 1], "int64"), axis]), axis])
            for i in range(3)
        )
        return self._scores_and_projection(q, k, v, lambda: b.const([-1, num_tokens, self.dim], "int64"))

    def _scores_and_projection(self, q: str, k: str, v: str, merged_shape: Callable[[], str]) -> str:
        """``softmax(q @ k^T * scale) @ v``, heads merged by ``Reshape`` to the shape
        ``merged_shape()`` writes (after the context transpose, as the exporters order it), then
        ``proj``."""
        b = self.b
        k = b.op("Transpose", [k], perm=[0, 1, 3, 2])
        scores = b.op("Mul", [b.op("MatMul", [q, k]), b.const(self.head_dim**-0.5)])
        probs = b.op("Softmax", [scores], axis=-1)
        context = b.op("Transpose", [b.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        context = L.reshape(b, context, merged_shape())
        with b.module("proj"):
            return L.linear(b, context, self.dim, self.dim, input_rank=3)

    def attention(self, x: str) -> str:
        """timm ``Attention`` (``fused_attn=False``)."""
        b = self.b
        batch = L.dim_of(b, x, 0)
        tokens = L.dim_of(b, x, 1)
        channels = L.dim_of(b, x, 2)
        with b.module("qkv"):
            qkv = L.linear(b, x, self.dim, 3 * self.dim, input_rank=3, gain=L.ATTENTION_GAIN)
        shape = b.op(
            "Concat",
            [L.as_shape_entry(b, batch), L.as_shape_entry(b, tokens), b.const([3], "int64"),
             b.const([self.num_heads], "int64"), b.const([self.head_dim], "int64")],
            axis=0,
        )
        qkv = b.op("Transpose", [L.reshape(b, qkv, shape)], perm=[2, 0, 3, 1, 4])
        parts = b.op_multi("Split", [qkv, b.const([1, 1, 1], "int64")], num_outputs=3, axis=0)
        q, k, v = (b.op("Squeeze", [part, b.const([0], "int64")]) for part in parts)
        return self._scores_and_projection(
            q, k, v,
            lambda: b.op(
                "Concat",
                [L.as_shape_entry(b, batch), L.as_shape_entry(b, tokens), L.as_shape_entry(b, channels)],
                axis=0,
            ),
        )

    def block(self, x: str, num_tokens: int) -> str:
        """timm ``Block``: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""
        b = self.b
        normed = self.layer_norm(x, "norm1")
        with b.module("attn"):
            attn = self.attention_dynamo(normed, num_tokens) if b.dynamo else self.attention(normed)
        x = b.op("Add", [x, attn])
        normed = self.layer_norm(x, "norm2")
        with b.module("mlp"):
            with b.module("fc1"):
                h = L.linear(b, normed, self.dim, self.mlp_hidden, input_rank=3)
            with b.module("act"):
                h = L.gelu(b, h)
            with b.module("fc2"):
                h = L.linear(b, h, self.mlp_hidden, self.dim, input_rank=3)
        return b.op("Add", [x, h])


def build(
    *,
    seed: int,
    opset: int,
    image_size: int = 224,
    patch_size: int = 16,
    dim: int = 192,
    depth: int = 4,
    num_heads: int = 3,
    mlp_hidden: int = 768,
    num_classes: int = 1000,
    layer_norm_eps: float = 1e-6,
    layernorm: str = "auto",
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """A small ViT classifier; ``layernorm`` as for ``bert`` (``"auto"``, ``"fused"``, ``"decomposed"``).

    ``exporter="dynamo"`` (opset >= 18) writes ``torch.onnx.export(..., dynamo=True)``'s pattern
    (``tests/fixtures/torch/vit_dynamo18.onnx``): the batch size from ``Shape(start=0, end=1)`` of
    the input, static reshapes with -1 for the batch, ``unbind`` as ``Slice → Squeeze``.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    if dim % num_heads:
        raise ValueError(f"dim ({dim}) must be a multiple of num_heads ({num_heads})")
    decomposed = L.decomposes_layernorm(layernorm, opset)
    num_patches = (image_size // patch_size) ** 2
    b = OnnxGraphBuilder(seed=seed, opset=opset, exporter=exporter)
    writer = _VitWriter(b, dim=dim, num_heads=num_heads, mlp_hidden=mlp_hidden, eps=layer_norm_eps,
                        decomposed=decomposed)
    x = b.input("input", "float32", ("batch", 3, image_size, image_size))
    batch_size = L.dim_slice(b, x, 0) if b.dynamo else None
    cls_token = b.param("cls_token", b.normal((1, 1, dim), 0.02))
    pos_embed = b.param("pos_embed", b.normal((1, num_patches + 1, dim), 0.02))
    x = writer.patch_embed(x, patch_size, num_patches)
    first_token = b.const(0, "int64")  # x[:, 0]; the exporter hoists it before the cls concat
    x = writer.prepend_cls_token(x, cls_token, batch_size)
    x = b.op("Add", [x, pos_embed])
    with b.module("blocks"):
        for index in range(depth):
            with b.module(f"blocks.{index}"):
                x = writer.block(x, num_patches + 1)
    x = writer.layer_norm(x, "norm")
    x = b.op("Gather", [x, first_token], axis=1)
    with b.module("head"):
        x = L.linear(b, x, dim, num_classes, input_rank=2)
    b.output(x, "logits", "float32", ("batch", num_classes))
    return b.model("vit", doc=f"ViT: {image_size}px, patch {patch_size}, dim {dim}, depth {depth}, {num_heads} heads")
