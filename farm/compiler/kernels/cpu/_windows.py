"""Sliding-window helpers shared by the wide im2col conv and the pooling kernels.

*Phase planes* turn a strided, padded 2-D window operation into long unit-stride loops. With
stride s, the padded input plane is split into s*s planes,
``phase[a*s + b][r, q] = x[r*s + a - pad_top, q*s + b - pad_left]`` (``fill`` outside the image),
each ``cols`` wide. Output pixel (oy, ox) and kernel tap (i, j) then read
``phase[(i*dh % s)*s + j*dw % s][oy + i*dh // s, ox + j*dw // s]``, so for one tap the whole
output plane is one contiguous slice of a flattened phase plane, ``cols`` wide per output row
(the ``cols - Wo`` extra columns per row are computed and dropped). One pass builds the phases,
then every tap is a single vectorized loop of Ho*cols elements instead of Ho short ones.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64

from farm.compiler.kernels.cpu._simd16 import max_into


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def valid_columns(offset, stride, in_width, out_width):
    """[lo, hi): the output columns ox whose input column ox*stride + offset is in the image."""
    lo = 0 if offset >= 0 else (-offset + stride - 1) // stride
    hi = (in_width - 1 - offset) // stride + 1 if in_width - 1 - offset >= 0 else 0
    lo = min(lo, out_width)
    return lo, max(min(hi, out_width), lo)


# The helpers index from 0 over slices: numba's negative-index wrap-around check on an index
# like ``ox + offset`` (which may be negative as far as LLVM knows) blocks vectorization.
@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def copy_window(dst, src, start, stride):
    """dst[t] = src[start + t*stride]."""
    n = dst.shape[0]
    if stride == 1:
        window = src[start : start + n]
        for t in range(n):
            dst[t] = window[t]
    else:
        # Unsigned indices: no wrap-around branch, so LLVM vectorizes the strided gather (2x).
        first = uint64(start)
        step = uint64(stride)
        for t in range(n):
            dst[t] = src[first + uint64(t) * step]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def phase_geometry(out_h, out_w, kh, kw, stride, dh, dw):
    """(rows, cols) of each phase plane: every tap's flat window of out_h*cols elements fits."""
    rows = out_h + ((kh - 1) * dh) // stride + 1
    cols = out_w + ((kw - 1) * dw) // stride
    return rows, cols


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def phase_planes(plane, stride, pad_top, pad_left, rows, cols, fill):
    """The stride*stride phase planes of a padded 2-D ``plane``, flattened: [stride*stride, rows*cols]."""
    h, w = plane.shape
    phases = np.empty((stride * stride, rows * cols), np.float32)
    for a in range(stride):
        for r in range(rows):
            iy = r * stride + a - pad_top
            for b in range(stride):
                dst = phases[a * stride + b, r * cols : (r + 1) * cols]
                if iy < 0 or iy >= h:
                    for q in range(cols):
                        dst[q] = fill
                    continue
                lo, hi = valid_columns(b - pad_left, stride, w, cols)
                for q in range(lo):
                    dst[q] = fill
                copy_window(dst[lo:hi], plane[iy], lo * stride + b - pad_left, stride)
                tail = dst[hi:]
                for q in range(cols - hi):
                    tail[q] = fill
    return phases


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def tap_window(phases, i, j, stride, dh, dw, cols, length):
    """The flat slice of the phase planes that tap (i, j) reads for the whole output plane."""
    phase = ((i * dh) % stride) * stride + (j * dw) % stride
    start = ((i * dh) // stride) * cols + (j * dw) // stride
    return phases[phase, start : start + length]


@njit(error_model="numpy", cache=True, nogil=True, inline="always")
def windows_3x3(phases, stride, dh, dw, cols, length):
    """The nine tap windows of a 3x3 kernel, row by row."""
    return (
        tap_window(phases, 0, 0, stride, dh, dw, cols, length),
        tap_window(phases, 0, 1, stride, dh, dw, cols, length),
        tap_window(phases, 0, 2, stride, dh, dw, cols, length),
        tap_window(phases, 1, 0, stride, dh, dw, cols, length),
        tap_window(phases, 1, 1, stride, dh, dw, cols, length),
        tap_window(phases, 1, 2, stride, dh, dw, cols, length),
        tap_window(phases, 2, 0, stride, dh, dw, cols, length),
        tap_window(phases, 2, 1, stride, dh, dw, cols, length),
        tap_window(phases, 2, 2, stride, dh, dw, cols, length),
    )


@njit(error_model="numpy", cache=True, nogil=True)
def pooled_taps(phases, kh, kw, stride, dh, dw, cols, length, is_max):
    """Max (or sum) over the kh x kw tap windows of one output plane; 3x3 in one pass."""
    acc = np.empty(length, np.float32)
    if kh == 3 and kw == 3:
        x0, x1, x2, x3, x4, x5, x6, x7, x8 = windows_3x3(phases, stride, dh, dw, cols, length)
        if is_max:
            for q in range(length):
                acc[q] = max(
                    max(max(x0[q], x1[q]), max(x2[q], x3[q])),
                    max(max(x4[q], x5[q]), max(max(x6[q], x7[q]), x8[q])),
                )
        else:
            for q in range(length):
                acc[q] = x0[q] + x1[q] + x2[q] + x3[q] + x4[q] + x5[q] + x6[q] + x7[q] + x8[q]
        return acc
    first = tap_window(phases, 0, 0, stride, dh, dw, cols, length)
    for q in range(length):
        acc[q] = first[q]
    for i in range(kh):
        for j in range(kw):
            if i == 0 and j == 0:
                continue
            window = tap_window(phases, i, j, stride, dh, dw, cols, length)
            if is_max:
                max_into(acc, window)
            else:
                for q in range(length):
                    acc[q] += window[q]
    return acc
