"""The fused ops our passes produce, and exactly what each computes.

These are the contract between the passes (which create them), the reference interpreter (which
defines their numbers) and the kernels (which implement them). All live in the default domain
under names that ONNX does not use, except where noted.

Activations
-----------
Epilogue activations are named by a string plus two float parameters ``alpha`` and ``beta``:

====================  ==========================================  =================
``activation``        y =                                         parameters
====================  ==========================================  =================
``""``                x
``"Relu"``            max(x, 0)
``"LeakyRelu"``       x if x >= 0 else alpha * x                  alpha
``"Clip"``            min(max(x, alpha), beta)                    alpha=min, beta=max
``"Sigmoid"``         1 / (1 + exp(-x))
``"Tanh"``            tanh(x)
``"HardSigmoid"``     max(0, min(1, alpha * x + beta))            alpha, beta
``"HardSwish"``       x * max(0, min(1, x / 6 + 1 / 2))
``"Silu"``            x * sigmoid(x)
``"Gelu"``            0.5 x (1 + erf(x / sqrt 2))
``"GeluTanh"``        0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
====================  ==========================================  =================

FusedConv
---------
inputs ``(X, W, B?, R?)``; attributes: every ONNX Conv attribute (``auto_pad`` already resolved
into explicit ``pads`` by the frontend, ``dilations``, ``group``, ``kernel_shape``, ``strides``),
plus ``activation``, ``alpha``, ``beta`` and ``residual`` (``"pre"`` or ``"post"``)::

    z = conv(X, W) + B                      # B broadcast over channels, absent = 0
    y = act(z + R)      if residual == "pre"    (ResNet: add then ReLU)
    y = act(z) + R      if residual == "post"
    y = act(z)          when R is absent

FusedConvTranspose
------------------
inputs ``(X, W, B?)``; attributes: every ONNX ConvTranspose attribute (``auto_pad`` resolved as
for ConvTranspose), plus ``activation``, ``alpha``, ``beta``::

    y = act(conv_transpose(X, W) + B)       # B broadcast over channels, absent = 0

No residual: a decoder adds its skip connection after a Concat or a Conv, not here.

FusedGemm
---------
inputs ``(A, B, bias?, R?)``; attributes ``transB`` (0/1), ``activation``, ``alpha``, ``beta``,
``residual`` (as FusedConv). MatMul semantics with numpy broadcasting of the batch dimensions::

    z = A @ (B.T if transB else B) + bias   # transB transposes the last two axes; bias over the last axis
    y = act(z + R) / act(z) + R / act(z)    # as FusedConv

ONNX Gemm's ``alpha``/``beta``/``transA`` are folded away by the epilogue-fusion pass (into the
weights and bias when constant, or into explicit nodes otherwise).

LayerNorm
---------
inputs ``(X, scale, bias?)``; attributes ``axis`` (default -1), ``epsilon`` (default 1e-5).
Identical to ONNX LayerNormalization (opset 17) with ``stash_type`` float32 and one output.

Gelu
----
input ``(X,)``; attribute ``approximate``: ``"none"`` (erf form) or ``"tanh"``. Identical to
ONNX Gelu (opset 20).

Attention
---------
inputs ``(Q, K, V, mask?)`` with Q ``[B, Sq, H*D]``, K and V ``[B, Sk, H*D]`` (the heads packed in
the last axis, as the projections produce them); attributes ``num_heads`` (H) and ``scale``
(a float, usually 1/sqrt(D)). ``mask`` is additive and broadcastable to ``[B, H, Sq, Sk]``::

    q, k, v = split_heads(Q), split_heads(K), split_heads(V)          # [B, H, S, D]
    p = softmax(scale * q @ k^T + mask, axis=-1)
    Y = merge_heads(p @ v)                                            # [B, Sq, H*D]

Output ``Y`` has Q's shape. With attribute ``packed_qkv = 1`` the inputs are ``(QKV, "", "",
mask?)``: Q, K and V are the three equal parts of QKV ``[B, S, 3*H*D]``'s last axis (a fused
QKV projection; ``passes.packed_attention`` removes the Split that separated them), and Y is
``[B, S, H*D]``.

Split outputs of horizontal fusion use plain ONNX ``Split``; Softmax fusion produces plain ONNX
``Softmax`` (opset-13 semantics: along one ``axis``).
"""

from __future__ import annotations

ACTIVATIONS = (
    "",
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "HardSigmoid",
    "HardSwish",
    "Silu",
    "Gelu",
    "GeluTanh",
)

FUSED_OPS = ("FusedConv", "FusedConvTranspose", "FusedGemm", "LayerNorm", "Gelu", "Attention")

RESIDUAL_MODES = ("pre", "post")
