"""The inner loop of the few-rows GEMMs (``gemm.small_rows``, the recurrent hidden projection).

For a handful of rows (a batch of 1-8 at inference) BLAS's packing costs more than it saves;
the product is an "axpy" sweep instead: weight row k scaled by a[i, k] is added to row i's
partial sums, which stay in L1, and each weight row is read once for every row. Eight weight rows
go into each pass over the partial sums, so the sums are loaded and stored once per eight
multiply-adds: the loop is bound by the FMAs, not by the store port (the one-row-at-a-time loop
was 1.2-3.6x slower at batch 1-8, K 64-256).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True, inline="always")
def add_row_products(acc, a, w, active, col0, col1, shift):
    """acc[i, col0-shift:col1-shift] += a[i] @ w[:, col0:col1] for every row i with active[i].

    a [M, K], w [K, N], acc [M, >= col1-shift]; ``shift`` lets ``acc`` hold only a block of the
    columns (``shift = col0``) or all of them (``shift = 0``)."""
    rows, depth = a.shape
    width = col1 - col0
    k8 = depth - depth % 8
    for k in range(0, k8, 8):
        w0 = w[k, col0:col1]
        w1 = w[k + 1, col0:col1]
        w2 = w[k + 2, col0:col1]
        w3 = w[k + 3, col0:col1]
        w4 = w[k + 4, col0:col1]
        w5 = w[k + 5, col0:col1]
        w6 = w[k + 6, col0:col1]
        w7 = w[k + 7, col0:col1]
        for i in range(rows):
            if not active[i]:
                continue
            ai = a[i]
            a0, a1, a2, a3 = ai[k], ai[k + 1], ai[k + 2], ai[k + 3]
            a4, a5, a6, a7 = ai[k + 4], ai[k + 5], ai[k + 6], ai[k + 7]
            dst = acc[i, col0 - shift : col1 - shift]
            for j in range(width):  # indices from 0 so that the loop vectorizes
                dst[j] += (a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]) + (
                    a4 * w4[j] + a5 * w5[j] + a6 * w6[j] + a7 * w7[j]
                )
    for k in range(k8, depth):
        wrow = w[k, col0:col1]
        for i in range(rows):
            if not active[i]:
                continue
            av = a[i, k]
            dst = acc[i, col0 - shift : col1 - shift]
            for j in range(width):
                dst[j] += av * wrow[j]
