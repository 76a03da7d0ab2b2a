"""``bert``: Hugging Face's ``BertModel`` (eager attention) as the TorchScript exporter writes it.

Inputs ``input_ids``, ``attention_mask`` and ``token_type_ids``, all ``[batch, seq]`` int64;
outputs ``last_hidden_state [batch, seq, hidden]`` and ``pooler_output [batch, hidden]``.

The pattern, node for node as in ``tests/fixtures/torch/bert_ts17.onnx``:

- extended mask: ``Unsqueeze(1) → Unsqueeze(2) → Cast(float) → Sub(1.0, ·) → Mul(·, finfo.min)``;
- embeddings: ``Shape → Gather(1)`` gives seq; ``Slice`` of the ``position_ids`` buffer (a
  ``Constant``) up to it; three embedding ``Gather``s, two ``Add``s and a LayerNorm;
- per layer: Q/K/V ``MatMul + Add(bias, ·)``; ``Shape/Gather/Unsqueeze/Concat → Reshape`` to heads;
  ``Transpose`` (Q, V: perm 0,2,1,3; K: 0,2,3,1); ``MatMul → Div(sqrt(d)) → Add(mask) → Softmax →
  MatMul → Transpose → Reshape``; output dense, residual ``Add``, LayerNorm; FFN dense, Erf-GELU,
  dense, residual ``Add``, LayerNorm;
- pooler: ``Gather(axis=1, index 0) → Gemm → Tanh``.

LayerNorm is ``LayerNormalization`` from opset 17 and the exporter's ReduceMean/Sub/Pow/Sqrt/Div
decomposition below (``layernorm="auto"``), or forced with ``"fused"`` / ``"decomposed"``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from farm.zoo import torch_layers as L
from farm.zoo.onnx_builder import OnnxGraphBuilder
from farm.zoo.spec import InputSpec

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def input_specs(vocab_size: int = 4096, type_vocab_size: int = 2, **_: object) -> list[InputSpec]:
    """Token ids below the vocabulary size, a 0/1 padding mask and 0/1 segment ids."""
    return [
        InputSpec("input_ids", "int64", ("batch", "seq"), "token_ids", high=vocab_size),
        InputSpec("attention_mask", "int64", ("batch", "seq"), "mask"),
        InputSpec("token_type_ids", "int64", ("batch", "seq"), "segment_ids", high=type_vocab_size),
    ]


class _BertWriter:
    """Writes one BertModel into a builder; one method per Hugging Face module."""

    def __init__(self, b: OnnxGraphBuilder, *, hidden: int, num_heads: int, intermediate: int,
                 eps: float, decomposed: bool) -> None:
        self.b = b
        self.hidden = hidden
        self.num_heads = num_heads
        self.head_size = hidden // num_heads
        self.intermediate = intermediate
        self.eps = eps
        self.decomposed = decomposed
        # dynamo only: the traced [batch], [seq] sizes and the head-split / merge shapes, which
        # its optimizer computes once and shares between layers
        self.batch_seq: tuple[str, str] | None = None
        self.shared_shapes: dict[str, str] = {}

    def shared_shape(self, key: str, trailing: list[int]) -> str:
        """dynamo: ``Concat([batch], [seq], trailing...)``, written at its first use only."""
        assert self.batch_seq is not None
        if key not in self.shared_shapes:
            b = self.b
            self.shared_shapes[key] = b.op(
                "Concat", [*self.batch_seq, *(b.const([d], "int64") for d in trailing)], axis=0
            )
        return self.shared_shapes[key]

    def embedding(self, table: str, ids: str) -> str:
        """``nn.Embedding``: ``Gather(table, ids)`` (dynamo spells out ``axis=0``)."""
        if self.b.dynamo:
            return self.b.op("Gather", [table, ids], axis=0)
        return self.b.op("Gather", [table, ids])

    def layer_norm(self, x: str) -> str:
        """The ``LayerNorm`` child module of the current scope."""
        with self.b.module("LayerNorm"):
            return L.layer_norm(self.b, x, self.hidden, eps=self.eps, decomposed=self.decomposed)

    def extended_attention_mask(self, mask: str) -> str:
        """``(1.0 - mask[:, None, None, :].to(float32)) * finfo(float32).min``."""
        b = self.b
        if b.dynamo:
            x = b.op("Unsqueeze", [mask, b.const([1, 2], "int64")])
        else:
            x = b.op("Unsqueeze", [mask, b.const([1], "int64")])
            x = b.op("Unsqueeze", [x, b.const([2], "int64")])
        x = L.cast(b, x, "float32")
        x = b.op("Sub", [b.const(1.0), x])
        return b.op("Mul", [x, b.const(L.FLOAT32_MIN)])

    def embeddings(self, input_ids: str, token_type_ids: str, *, vocab_size: int, max_positions: int,
                   type_vocab_size: int) -> str:
        """BertEmbeddings: word + token-type + position embeddings, then LayerNorm."""
        b = self.b
        with b.module("embeddings"):
            position_ids_buffer = np.arange(max_positions, dtype=np.int64)[None, :]
            if b.dynamo:
                assert self.batch_seq is not None
                buffer = b.param(b.param_name("position_ids"), position_ids_buffer)
                ones = b.const([1], "int64")
                position_ids = b.op("Slice", [buffer, b.const([0], "int64"), self.batch_seq[1], ones, ones])
            else:
                seq_length = L.dim_of(b, input_ids, 1)
                buffer = b.anonymous_const(position_ids_buffer, "int64", "Slice")
                axes = b.const([1], "int64")
                starts = b.const([0], "int64")
                ends = b.op("Unsqueeze", [seq_length, b.const([0], "int64")])
                steps = b.const([1], "int64")
                position_ids = b.op("Slice", [buffer, starts, ends, axes, steps])
            word_table = b.normal((vocab_size, self.hidden), 1.0)
            word_table[0] = 0.0  # padding_idx=0
            with b.module("word_embeddings"):
                words = self.embedding(b.param(b.param_name("weight"), word_table), input_ids)
            positions_table = b.normal((max_positions, self.hidden), 1.0)
            types_table = b.normal((type_vocab_size, self.hidden), 1.0)
            with b.module("token_type_embeddings"):
                types = self.embedding(b.param(b.param_name("weight"), types_table), token_type_ids)
            x = b.op("Add", [words, types])
            with b.module("position_embeddings"):
                positions = self.embedding(b.param(b.param_name("weight"), positions_table), position_ids)
            x = b.op("Add", [x, positions])
            return self.layer_norm(x)

    def split_heads(self, x: str) -> str:
        """``x.view(x.size()[:-1] + (heads, head_size))`` with the traced Shape/Gather/Concat."""
        b = self.b
        if b.dynamo:
            return L.reshape(b, x, self.shared_shape("heads", [self.num_heads, self.head_size]))
        batch = L.dim_of(b, x, 0)
        seq = L.dim_of(b, x, 1)
        shape = b.op(
            "Concat",
            [L.as_shape_entry(b, batch), L.as_shape_entry(b, seq), b.const([self.num_heads], "int64"),
             b.const([self.head_size], "int64")],
            axis=0,
        )
        return L.reshape(b, x, shape)

    def merge_heads(self, context: str) -> str:
        """``context.view(context.size()[:-2] + (hidden,))``."""
        b = self.b
        if b.dynamo:
            return L.reshape(b, context, self.shared_shape("merged", [self.hidden]))
        batch = L.dim_of(b, context, 0)
        seq = L.dim_of(b, context, 1)
        shape = b.op(
            "Concat",
            [L.as_shape_entry(b, batch), L.as_shape_entry(b, seq), b.const([self.hidden], "int64")],
            axis=0,
        )
        return L.reshape(b, context, shape)

    def attention_block(self, x: str, mask: str) -> str:
        """BertSelfAttention: Q/K/V projections, scores, mask, softmax, context, merge heads."""
        b = self.b
        with b.module("self"):
            with b.module("query"):
                query = L.linear(b, x, self.hidden, self.hidden, input_rank=3, gain=L.ATTENTION_GAIN)
            query = b.op("Transpose", [self.split_heads(query)], perm=[0, 2, 1, 3])
            with b.module("key"):
                key = L.linear(b, x, self.hidden, self.hidden, input_rank=3, gain=L.ATTENTION_GAIN)
            key = self.split_heads(key)
            with b.module("value"):
                value = L.linear(b, x, self.hidden, self.hidden, input_rank=3)
            value = b.op("Transpose", [self.split_heads(value)], perm=[0, 2, 1, 3])
            # permute(0, 2, 1, 3) then transpose(-1, -2), merged by the exporter into one Transpose
            key = b.op("Transpose", [key], perm=[0, 2, 3, 1])
            scores = b.op("MatMul", [query, key])
            scores = b.op("Div", [scores, b.const(math.sqrt(self.head_size))])
            scores = b.op("Add", [scores, mask])
            probs = b.op("Softmax", [scores], axis=-1)
            context = b.op("MatMul", [probs, value])
            context = self.merge_heads(b.op("Transpose", [context], perm=[0, 2, 1, 3]))
        with b.module("output"):
            with b.module("dense"):
                out = L.linear(b, context, self.hidden, self.hidden, input_rank=3)
            out = b.op("Add", [out, x])
            return self.layer_norm(out)

    def layer(self, x: str, mask: str) -> str:
        """BertLayer: attention, then intermediate (dense + GELU) and output (dense + Add + LN)."""
        b = self.b
        with b.module("attention"):
            attention_output = self.attention_block(x, mask)
        with b.module("intermediate"):
            with b.module("dense"):
                h = L.linear(b, attention_output, self.hidden, self.intermediate, input_rank=3)
            with b.module("intermediate_act_fn"):
                h = L.gelu(b, h)
        with b.module("output"):
            with b.module("dense"):
                h = L.linear(b, h, self.intermediate, self.hidden, input_rank=3)
            h = b.op("Add", [h, attention_output])
            return self.layer_norm(h)


def build(
    *,
    seed: int,
    opset: int,
    vocab_size: int = 4096,
    hidden: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate: int = 1024,
    max_positions: int = 512,
    type_vocab_size: int = 2,
    layer_norm_eps: float = 1e-12,
    layernorm: str = "auto",
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """A BERT encoder with embeddings, ``num_layers`` BertLayers and the pooler.

    ``exporter="dynamo"`` (opset >= 18) writes what ``torch.onnx.export(..., dynamo=True)`` does
    instead (``tests/fixtures/torch/bert_dynamo18.onnx``): sizes from ``Shape(start, end)`` of
    ``token_type_ids`` with the head-split and merge shapes computed once for all layers,
    ``Unsqueeze(axes=[1, 2])`` for the mask, ``Add(product, bias)``, ``Reshape(allowzero=1)``,
    ``Mul(x, Mul(0.5, 1 + erf))`` GELU, ``LayerNormalization(stash_type=1)`` and constants as
    shared initializers.
    """
    if hidden % num_heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of num_heads ({num_heads})")
    decomposed = L.decomposes_layernorm(layernorm, opset)
    b = OnnxGraphBuilder(seed=seed, opset=opset, exporter=exporter)
    input_ids = b.input("input_ids", "int64", ("batch", "seq"))
    attention_mask = b.input("attention_mask", "int64", ("batch", "seq"))
    token_type_ids = b.input("token_type_ids", "int64", ("batch", "seq"))
    writer = _BertWriter(b, hidden=hidden, num_heads=num_heads, intermediate=intermediate,
                         eps=layer_norm_eps, decomposed=decomposed)
    if b.dynamo:
        writer.batch_seq = (L.dim_slice(b, token_type_ids, 0), L.dim_slice(b, token_type_ids, 1))
    first_token = b.const(0, "int64")  # hidden_states[:, 0]; the exporter hoists it to the top
    mask = writer.extended_attention_mask(attention_mask)
    x = writer.embeddings(input_ids, token_type_ids, vocab_size=vocab_size, max_positions=max_positions,
                          type_vocab_size=type_vocab_size)
    with b.module("encoder"):
        for index in range(num_layers):
            with b.module(f"layer.{index}"):
                x = writer.layer(x, mask)
    last_hidden_state = b.output(x, "last_hidden_state", "float32", ("batch", "seq", hidden))
    with b.module("pooler"):
        pooled = b.op("Gather", [last_hidden_state, first_token], axis=1)
        with b.module("dense"):
            pooled = L.linear(b, pooled, hidden, hidden, input_rank=2)
        with b.module("activation"):
            pooled = b.op("Tanh", [pooled])
    b.output(pooled, "pooler_output", "float32", ("batch", hidden))
    return b.model(
        "bert",
        doc=f"BERT encoder: {num_layers} layers, hidden {hidden}, {num_heads} heads, FFN {intermediate}, "
        f"vocab {vocab_size}",
    )
