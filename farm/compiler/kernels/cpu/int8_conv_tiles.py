"""INT8 convolution on VNNI register tiles: ``cpu.int8.conv_tiles`` (straight into NCHW) and
``cpu.int8.conv_vnni`` (pixels as GEMM rows, for small maps).

``cpu.int8.conv_vnni`` multiplies pixel rows by the weight and so produces [pixels, channels],
which the conv epilogue then transposes into NCHW: with MobileNet's short K (16-120 channels)
the gather and the transpose cost 10x the arithmetic. This tactic turns the product around, as
``pointwise_tiles`` does in FP32: a tile is 12 output channels x 32 pixels of one image, so its
rows are rows of the NCHW output plane.

* The input is quantized (uint8 codes, an int8 input moved up by 128 as in ``int8_vnni``) and
  gathered once per run into quads ``[N, ceil(K/4), P32, 4]``: for each group of four K
  values (``k = (c*kh + i)*kw + j``, the receptive field's order) and each output pixel, its four
  bytes side by side, so 16 pixels x 4 K values are one 64-byte vector. A 1 x 1 stride-1 conv is
  the special case where the gather only interleaves four channel planes; padding taps are the
  zero point (the quantized 0.0). P32 is the plane rounded up to 32 pixels.
* The weight is packed at build time into 12-channel panels ``[ceil(M/12), ceil(K/4), 12, 4]``
  (zeros past M and K): each step broadcasts one channel's four bytes.
* Each step of four K values: two 64-byte loads, 12 broadcasts, 24 ``vpdpbusd`` (u8 pixels x
  s8 weights), 1,536 multiply-adds.
* Epilogue on the accumulators: ``(acc - zp*colsum[m])`` in int32, converted, times
  ``s_x * s_w[m]`` plus the bias in one FMA, then the residual and the activation
  (:func:`~._epilogue.finish16`), one masked store per vector into the output plane. LeakyRelu
  runs over the task's finished rows (``finish_row``).

Tasks are (image, 12-channel panel, run of 32-pixel panels), as in ``pointwise_tiles``.
Offered where the host has AVX-512 VNNI (:data:`~._vnni.VNNI`); group 1, 1-D or 2-D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, prange

from farm.compiler.ir import Graph, Node
from farm.compiler.kernels.cpu._epilogue import (
    RES_NONE,
    VECTOR_ACTS,
    finish16,
    finish_row,
    residual_rows,
    vector_epilogue,
)
from farm.compiler.kernels.cpu._operands import workspace
from farm.compiler.kernels.cpu._simd16 import (
    LANES,
    called_tile,
    vevens16,
    vfma16,
    vload16_lanes,
    vload16_masked,
    vsplat16,
)
from farm.compiler.kernels.cpu._threads import threads_for
from farm.compiler.kernels.cpu._vnni import (
    vbroadcast_bytes4,
    vcodes16,
    vcvt_f32x16,
    vdpbusd,
    vload_bytes64,
    vsplat_i32x16,
    vstore_quads,
    vsub_i32x16,
    vzero_i32x16,
)
from farm.compiler.kernels.cpu.conv import ConvGeometry, _as_4d, _out_4d
from farm.compiler.kernels.cpu.int8_conv import Int8Im2colConv, im2col_quantize
from farm.compiler.kernels.cpu.int8_vnni import MR as VNNI_MR
from farm.compiler.kernels.cpu.int8_vnni import (
    VnniTactic,
    multiply,
    quantized_rows,
    uint8_quant,
    vnni_operands,
    vnni_prepare,
)
from farm.compiler.kernels.cpu.pointwise_tiles import tile_tasks
from farm.compiler.kernels.registry import Prepared, register_tactic

MR = 12  # output channels of a tile
WIDE_ROWS = 8  # output rows at least this wide are gathered as vectors by conv_vnni
PIXELS = 2 * LANES  # pixels of a tile


def pack_channel_panels(w: np.ndarray) -> np.ndarray:
    """int8 ``w`` [M, K] as flat 12-channel panels ``[ceil(M/12), ceil(K/4), 12, 4]`` (zeros past
    M and K): panel ``b``, step ``q``, channel ``r`` holds ``w[12b + r, 4q : 4q + 4]``."""
    m, k = w.shape
    kp = -(-k // 4) * 4
    mp = -(-m // MR) * MR
    padded = np.zeros((mp, kp), np.int8)
    padded[:m, :k] = w
    return np.ascontiguousarray(padded.reshape(mp // MR, MR, kp // 4, 4).transpose(0, 2, 1, 3)).reshape(-1)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tap_origin(x_img, h, w, k, k_count, kh, kw, pt, pl, dh, dw):
    """K index ``k``'s tap (c, i, j) as (its channel plane's flat offset, row offset, column
    offset), or a plane offset of -1 past ``k_count`` (a padding quad's zeros)."""
    if k >= k_count:
        return -1, 0, 0
    c = k // (kh * kw)
    return x_img + c * h * w, ((k // kw) % kh) * dh - pt, (k % kw) * dw - pl


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tap16(xf, plane_at, ioff, joff, h, w, oy, sh, ox0, sw, count):
    """The FP32 inputs of one tap (:func:`_tap_origin`) for output pixels ``ox0 .. ox0+15`` of
    output row ``oy`` (width stride ``sw`` 1 or 2), zeros outside the image, for a padding quad
    and, for stride 1, past ``count`` pixels: zeros quantize to the zero point, the padding's
    code. Only lanes inside the input row are read."""
    iy = oy * sh + ioff
    if plane_at < 0 or iy < 0 or iy >= h:
        return vsplat16(np.float32(0.0))
    ix0 = ox0 * sw + joff
    row = plane_at + iy * w
    if sw == 1:
        return vload16_lanes(xf, row + ix0, -ix0, min(w - ix0, count))
    return vevens16(
        vload16_lanes(xf, row + ix0, -ix0, w - ix0),
        vload16_lanes(xf, row + ix0 + LANES, -ix0 - LANES, w - ix0 - LANES),
    )


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def gather_quads(
    x, qf, n_img, kq, img_stride, quad_stride, k_count, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, inv_scale,
    zero_point, qmin, qmax,
):  # fmt: skip
    """The uint8 code of ``x[n, c, oy*sh - pt + i*dh, ox*sw - pl + j*dw]`` into the flat byte
    array ``qf`` at ``4 * (n*img_stride + q*quad_stride + oy*wo + ox) + t`` for
    ``k = 4q + t = (c*kh + i)*kw + j < k_count`` (q < ``kq``); the zero point for taps outside the
    image and for ``k >= k_count``. Only those bytes are written (masked stores): the layout's
    gaps, if any, keep what they hold. ``conv_tiles`` uses ``[N, Kq, P32, 4]`` (quads of one
    image), ``conv_vnni`` ``[Kq, N*P rounded up, 4]`` (the pixels of all images as GEMM rows).

    A dense 1 x 1 conv's whole quads take 16 pixels of four planes a step
    (:func:`~._vnni.vcodes16`, :func:`~._vnni.vstore_quads`), other width strides of 1 or
    2 16 pixels of one output row (:func:`_tap16`), wider strides one element at a time."""
    h, w = x.shape[2], x.shape[3]
    pad_q = np.uint8(min(max(np.float32(zero_point), qmin), qmax))
    dense = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and ho == h and wo == w
    plane = h * w
    xf = x.reshape(-1)
    inv_v, zp_v, lo_v, hi_v = vsplat16(inv_scale), vsplat16(zero_point), vsplat16(qmin), vsplat16(qmax)
    for task in prange(n_img * kq):
        n = task // kq
        q = task % kq
        at = 4 * (n * img_stride + q * quad_stride)
        if dense and 4 * q + 4 <= k_count:  # a 1 x 1 conv's four whole channel planes, 16 pixels a step
            src = (n * x.shape[1] + 4 * q) * plane
            for p0 in range(0, plane, LANES):
                count = min(LANES, plane - p0)
                vstore_quads(
                    qf, at + 4 * p0,
                    vcodes16(vload16_masked(xf, src + p0, count), inv_v, zp_v, lo_v, hi_v),
                    vcodes16(vload16_masked(xf, src + plane + p0, count), inv_v, zp_v, lo_v, hi_v),
                    vcodes16(vload16_masked(xf, src + 2 * plane + p0, count), inv_v, zp_v, lo_v, hi_v),
                    vcodes16(vload16_masked(xf, src + 3 * plane + p0, count), inv_v, zp_v, lo_v, hi_v),
                    count,
                )  # fmt: skip
            continue
        if sw <= 2:  # 16 output pixels of a row a step, each tap's input row read as vectors
            x_img = n * x.shape[1] * plane
            p0, i0, j0 = _tap_origin(x_img, h, w, 4 * q, k_count, kh, kw, pt, pl, dh, dw)
            p1, i1, j1 = _tap_origin(x_img, h, w, 4 * q + 1, k_count, kh, kw, pt, pl, dh, dw)
            p2, i2, j2 = _tap_origin(x_img, h, w, 4 * q + 2, k_count, kh, kw, pt, pl, dh, dw)
            p3, i3, j3 = _tap_origin(x_img, h, w, 4 * q + 3, k_count, kh, kw, pt, pl, dh, dw)
            for oy in range(ho):
                for ox0 in range(0, wo, LANES):
                    count = min(LANES, wo - ox0)
                    vstore_quads(
                        qf, at + 4 * (oy * wo + ox0),
                        vcodes16(_tap16(xf, p0, i0, j0, h, w, oy, sh, ox0, sw, count), inv_v, zp_v, lo_v, hi_v),
                        vcodes16(_tap16(xf, p1, i1, j1, h, w, oy, sh, ox0, sw, count), inv_v, zp_v, lo_v, hi_v),
                        vcodes16(_tap16(xf, p2, i2, j2, h, w, oy, sh, ox0, sw, count), inv_v, zp_v, lo_v, hi_v),
                        vcodes16(_tap16(xf, p3, i3, j3, h, w, oy, sh, ox0, sw, count), inv_v, zp_v, lo_v, hi_v),
                        count,
                    )  # fmt: skip
            continue
        for t in range(4):
            k = 4 * q + t
            if k >= k_count:
                for p in range(ho * wo):
                    qf[at + 4 * p + t] = pad_q
                continue
            c = k // (kh * kw)
            i = (k // kw) % kh
            j = k % kw
            xplane = x[n, c]
            for oy in range(ho):
                iy = oy * sh - pt + i * dh
                row = at + 4 * oy * wo + t
                if iy < 0 or iy >= h:
                    for ox in range(wo):
                        qf[row + 4 * ox] = pad_q
                    continue
                row_in = xplane[iy]
                for ox in range(wo):
                    ix = ox * sw - pl + j * dw
                    if ix < 0 or ix >= w:
                        qf[row + 4 * ox] = pad_q
                    else:
                        v = np.rint(row_in[ix] * inv_scale) + zero_point
                        qf[row + 4 * ox] = np.uint8(min(max(v, qmin), qmax))


@njit(cache=True, nogil=True, error_model="numpy", inline="always", fastmath={"contract"})
def _row_out(a0, a1, zw, scale, bias, m, of, at, n0, n1, res, ep):
    """Output channel ``m``'s two accumulators dequantized, finished and stored (``n0``/``n1``
    lanes at of[at:] / of[at+16:])."""
    z = vsplat_i32x16(zw[m])
    s = vsplat16(scale[m])
    b = vsplat16(bias[m])
    finish16(vfma16(vcvt_f32x16(vsub_i32x16(a0, z)), s, b), of, at, n0, res, ep)
    finish16(vfma16(vcvt_f32x16(vsub_i32x16(a1, z)), s, b), of, at + LANES, n1, res, ep)


@called_tile
def _tile(xq, x_at, pstride, kq, wp, w_at, zw, scale, bias, m0, rows, of, o_at, plane, n0, n1, res, ep):
    """Channels ``m0 .. m0+rows-1`` (<= 12) x 32 pixels: pixel quads at xq[x_at + q*pstride],
    weight panel wp[w_at:], output rows at of[o_at + r*plane]."""
    z = vzero_i32x16()
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = a8 = a9 = a10 = a11 = z
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = b8 = b9 = b10 = b11 = z
    xa = x_at
    wa = w_at
    for _ in range(kq):
        u0 = vload_bytes64(xq, xa)
        u1 = vload_bytes64(xq, xa + 64)
        v = vbroadcast_bytes4(wp, wa)
        a0 = vdpbusd(a0, u0, v)
        b0 = vdpbusd(b0, u1, v)
        v = vbroadcast_bytes4(wp, wa + 4)
        a1 = vdpbusd(a1, u0, v)
        b1 = vdpbusd(b1, u1, v)
        v = vbroadcast_bytes4(wp, wa + 8)
        a2 = vdpbusd(a2, u0, v)
        b2 = vdpbusd(b2, u1, v)
        v = vbroadcast_bytes4(wp, wa + 12)
        a3 = vdpbusd(a3, u0, v)
        b3 = vdpbusd(b3, u1, v)
        v = vbroadcast_bytes4(wp, wa + 16)
        a4 = vdpbusd(a4, u0, v)
        b4 = vdpbusd(b4, u1, v)
        v = vbroadcast_bytes4(wp, wa + 20)
        a5 = vdpbusd(a5, u0, v)
        b5 = vdpbusd(b5, u1, v)
        v = vbroadcast_bytes4(wp, wa + 24)
        a6 = vdpbusd(a6, u0, v)
        b6 = vdpbusd(b6, u1, v)
        v = vbroadcast_bytes4(wp, wa + 28)
        a7 = vdpbusd(a7, u0, v)
        b7 = vdpbusd(b7, u1, v)
        v = vbroadcast_bytes4(wp, wa + 32)
        a8 = vdpbusd(a8, u0, v)
        b8 = vdpbusd(b8, u1, v)
        v = vbroadcast_bytes4(wp, wa + 36)
        a9 = vdpbusd(a9, u0, v)
        b9 = vdpbusd(b9, u1, v)
        v = vbroadcast_bytes4(wp, wa + 40)
        a10 = vdpbusd(a10, u0, v)
        b10 = vdpbusd(b10, u1, v)
        v = vbroadcast_bytes4(wp, wa + 44)
        a11 = vdpbusd(a11, u0, v)
        b11 = vdpbusd(b11, u1, v)
        xa += pstride
        wa += 4 * MR
    _row_out(a0, b0, zw, scale, bias, m0, of, o_at, n0, n1, res, ep)
    if rows > 1:
        _row_out(a1, b1, zw, scale, bias, m0 + 1, of, o_at + plane, n0, n1, res, ep)
    if rows > 2:
        _row_out(a2, b2, zw, scale, bias, m0 + 2, of, o_at + 2 * plane, n0, n1, res, ep)
    if rows > 3:
        _row_out(a3, b3, zw, scale, bias, m0 + 3, of, o_at + 3 * plane, n0, n1, res, ep)
    if rows > 4:
        _row_out(a4, b4, zw, scale, bias, m0 + 4, of, o_at + 4 * plane, n0, n1, res, ep)
    if rows > 5:
        _row_out(a5, b5, zw, scale, bias, m0 + 5, of, o_at + 5 * plane, n0, n1, res, ep)
    if rows > 6:
        _row_out(a6, b6, zw, scale, bias, m0 + 6, of, o_at + 6 * plane, n0, n1, res, ep)
    if rows > 7:
        _row_out(a7, b7, zw, scale, bias, m0 + 7, of, o_at + 7 * plane, n0, n1, res, ep)
    if rows > 8:
        _row_out(a8, b8, zw, scale, bias, m0 + 8, of, o_at + 8 * plane, n0, n1, res, ep)
    if rows > 9:
        _row_out(a9, b9, zw, scale, bias, m0 + 9, of, o_at + 9 * plane, n0, n1, res, ep)
    if rows > 10:
        _row_out(a10, b10, zw, scale, bias, m0 + 10, of, o_at + 10 * plane, n0, n1, res, ep)
    if rows > 11:
        _row_out(a11, b11, zw, scale, bias, m0 + 11, of, o_at + 11 * plane, n0, n1, res, ep)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def conv_tiles(xq, wp, zw, scale, bias, out, residual, res_mode, act, alpha, beta, m, plane, runs, chunks):
    """``out`` (flat NCHW, ``m`` channels of ``plane`` pixels) = epilogue(dequant(W x xq)) per
    image; ``xq`` [N, Kq, P32, 4] uint8 from :func:`gather_quads`, ``wp`` from
    :func:`pack_channel_panels`, ``zw``/``scale``/``bias`` per output channel; ``residual`` flat
    like ``out`` or a dummy. Tasks (image, 12-channel panel, run of 32-pixel panels) over
    ``chunks`` threads."""
    n_img, kq, p32 = xq.shape[0], xq.shape[1], xq.shape[2]
    xf = xq.reshape(-1)
    panels = -(-m // MR)
    pixel_panels = -(-plane // PIXELS)
    vector = act in VECTOR_ACTS  # else finish_row runs the activation afterwards
    ep = vector_epilogue(res_mode, act, alpha, beta)
    tasks = n_img * panels * runs
    pstride = p32 * 4
    for k in prange(chunks):
        for task in range(k * tasks // chunks, (k + 1) * tasks // chunks):
            img = task // (panels * runs)
            blk = (task // runs) % panels
            run = task % runs
            j0 = run * pixel_panels // runs
            j1 = (run + 1) * pixel_panels // runs
            m0 = blk * MR
            rows = min(MR, m - m0)
            o_base = (img * m + m0) * plane
            for j in range(j0, j1):
                p0 = j * PIXELS
                left = plane - p0
                n0 = min(left, LANES)
                n1 = min(max(left - LANES, 0), LANES)
                _tile(xf, (img * kq * p32 + p0) * 4, pstride, kq, wp, blk * kq * MR * 4, zw, scale, bias, m0, rows,
                      out, o_base + p0, plane, n0, n1, residual, ep)  # fmt: skip
            if not vector:
                p0 = j0 * PIXELS
                p1 = min(plane, j1 * PIXELS)
                for r in range(rows):
                    lo = o_base + r * plane + p0
                    hi = lo + p1 - p0
                    rrow = residual[lo:hi] if res_mode != RES_NONE else residual
                    finish_row(out[lo:hi], np.float32(0.0), bias, 0, rrow, res_mode, act, alpha, beta)


def gather(
    x: np.ndarray, qf: np.ndarray, n_img: int, kq: int, img_stride: int, quad_stride: int, k: int,
    geo: ConvGeometry, ho: int, wo: int, prepared: Prepared,
) -> None:  # fmt: skip
    """:func:`gather_quads` of the layer's input ``x`` (4-D) with the layer's quantization."""
    inv_scale, zp, qmin, qmax = uint8_quant(prepared)
    with threads_for(n_img * k * ho * wo):
        gather_quads(
            x, qf, n_img, kq, img_stride, quad_stride, k, geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left,
            geo.dh, geo.dw, ho, wo, inv_scale, np.float32(zp), qmin, qmax,
        )  # fmt: skip


@register_tactic
class Int8ConvTiles(VnniTactic, Int8Im2colConv):
    """INT8 conv on 12-channel x 32-pixel VNNI tiles stored straight into NCHW (module doc)."""

    name = "cpu.int8.conv_tiles"
    priority = -5

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return vnni_prepare(super().prepare(node, graph), pack_channel_panels)

    def run(
        self,
        node: Node,
        inputs: Sequence[np.ndarray | None],
        outputs: Sequence[np.ndarray],
        prepared: Prepared,
    ) -> None:
        (act, alpha, beta, mode), geo = self.epilogue_and_geometry(node, prepared)
        wp, _, _, zw, scale, bias, _ = vnni_operands(prepared)
        x = _as_4d(np.ascontiguousarray(inputs[0], dtype=np.float32))
        out4 = _out_4d(outputs[0])
        n_img, m, ho, wo = out4.shape
        if out4.size == 0:
            return
        plane = ho * wo
        k = int(prepared.params["vnni_k"])
        kq, p32 = -(-k // 4), -(-plane // PIXELS) * PIXELS
        xq = workspace(prepared, "quads", (n_img, kq, p32, 4), np.uint8)  # pixels past P: never stored
        gather(x, xq.reshape(-1), n_img, kq, kq * p32, p32, k, geo, ho, wo, prepared)
        target = out4 if out4.flags.c_contiguous else np.empty(out4.shape, np.float32)
        residual = residual_rows(inputs[3] if len(inputs) > 3 else None, outputs[0].shape, 1).reshape(-1)
        with threads_for(out4.size * k):
            runs, chunks = tile_tasks(n_img, m, plane)
            conv_tiles(
                xq, wp, zw, scale, bias, target.reshape(-1), residual, mode, act, alpha, beta, m, plane, runs,
                chunks,
            )  # fmt: skip
        if target is not out4:
            out4[...] = target


@register_tactic
class Int8VnniConv(VnniTactic, Int8Im2colConv):
    """The quantized receptive fields of all images' pixels as GEMM rows + the VNNI GEMM of
    ``int8_vnni`` + the conv epilogue (a transpose into NCHW): for maps too small to fill
    ``conv_tiles``' 32-pixel tiles (a 2 x 2 map fills 4 of 32). Output rows of at least
    :data:`WIDE_ROWS` pixels are gathered as quads ``[Kq, N*P, 4]`` 16 pixels a step, narrower
    ones by the row-major im2col (measured on 8 images: quads 0.244 ms against im2col 0.071 at
    512 @2x2, equal at 256 @4x4, 0.124 against 0.785 at 64 @16x16)."""

    name = "cpu.int8.conv_vnni"
    priority = -10

    def prepare(self, node: Node, graph: Graph) -> Prepared:
        return vnni_prepare(super().prepare(node, graph))

    def fill_product(
        self, x: np.ndarray, geo: ConvGeometry, ho: int, wo: int, prepared: Prepared, product: np.ndarray
    ) -> None:
        k = int(prepared.params["vnni_k"])
        kq, rows = -(-k // 4), product.shape[0]
        padded_rows = -(-rows // VNNI_MR) * VNNI_MR
        if wo >= WIDE_ROWS:  # the vector gather, 16 pixels of a row a step
            quads = workspace(prepared, "quads", (kq, padded_rows, 4), np.uint8)
            gather(x, quads.reshape(-1), x.shape[0], kq, ho * wo, padded_rows, k, geo, ho, wo, prepared)
            multiply(quads, rows, prepared, product, with_bias=False, quads=True)
            return
        # narrow rows: the row-major im2col, one pixel's receptive field at a time
        cols = quantized_rows(prepared, rows, "cols")
        inv_scale, zp, qmin, qmax = uint8_quant(prepared)
        with threads_for(rows * k):
            im2col_quantize(
                x, cols, geo.kh, geo.kw, geo.sh, geo.sw, geo.pad_top, geo.pad_left, geo.dh, geo.dw, ho, wo,
                inv_scale, np.float32(zp), qmin, qmax,
            )  # fmt: skip
        multiply(cols, rows, prepared, product, with_bias=False)
