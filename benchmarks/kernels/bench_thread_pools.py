"""Which numba threading layer lets numba kernels and OpenBLAS GEMMs take turns without a fight?

One conv layer as the CPU backend runs it (numba im2col -> BLAS GEMM -> numba bias+ReLU), timed
as a sequence and the GEMM alone, in a fresh process per configuration (the layer and libgomp's
spin policy are fixed when the pools start). Prints the median of 60 runs each.

    .venv/bin/python benchmarks/kernels/bench_thread_pools.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CONFIGS = {
    "omp, GOMP_SPINCOUNT=1000 (ours until compiler 0.2)": {"NUMBA_THREADING_LAYER": "omp", "GOMP_SPINCOUNT": "1000"},
    "omp, libgomp default spin": {"NUMBA_THREADING_LAYER": "omp"},
    "omp, OMP_WAIT_POLICY=passive": {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "passive"},
    "workqueue": {"NUMBA_THREADING_LAYER": "workqueue"},
}


def one_layer() -> None:
    """Child process: time the sequence and the GEMM alone under the inherited environment."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, nogil=True)
    def im2col(x, cols, kh, kw):
        c_count, h, w = x.shape
        ho, wo = h - kh + 1, w - kw + 1
        for r in prange(c_count * kh * kw):
            c, i, j = r // (kh * kw), (r // kw) % kh, r % kw
            for y in range(ho):
                for xx in range(wo):
                    cols[r, y * wo + xx] = x[c, y + i, xx + j]

    @njit(parallel=True, nogil=True)
    def bias_relu(y, b):
        for c in prange(y.shape[0]):
            for n in range(y.shape[1]):
                v = y[c, n] + b[c]
                y[c, n] = v if v > 0 else 0.0

    rng = np.random.default_rng(0)
    x = rng.random((64, 58, 58), dtype=np.float32)
    w = rng.random((64, 576), dtype=np.float32)
    b = rng.random(64, dtype=np.float32)
    cols = np.empty((576, 56 * 56), np.float32)
    out = np.empty((64, 56 * 56), np.float32)

    def sequence() -> None:
        im2col(x, cols, 3, 3)
        np.matmul(w, cols, out=out)
        bias_relu(out, b)

    def median_ms(fn, reps: int = 60) -> float:
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(samples))

    small = out[:8]
    seq = median_ms(sequence)
    gemm = median_ms(lambda: np.matmul(w, cols, out=out))
    tiny = median_ms(lambda: bias_relu(small, b), reps=500)
    print(f"{seq:.3f} {gemm:.3f} {1e3 * tiny:.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        one_layer()
        return
    rounds = int(os.environ.get("ROUNDS", "3"))
    results: dict[str, list[tuple[float, ...]]] = {label: [] for label in CONFIGS}
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for _ in range(rounds):  # interleaved rounds: the machine is shared and noisy
        for label, env in CONFIGS.items():
            result = subprocess.run(
                [sys.executable, __file__, "--child"],
                env={**clean, **env},
                capture_output=True,
                text=True,
                check=True,
            )
            results[label].append(tuple(float(v) for v in result.stdout.split()))
    print(
        f"{'configuration':36s} {'sequence ms':>12s} {'GEMM ms':>8s} {'tiny prange us':>15s}  (best round of {rounds})"
    )
    for label, rows in results.items():
        seq, gemm, tiny = (min(r[i] for r in rows) for i in range(3))
        print(f"{label:36s} {seq:12.2f} {gemm:8.2f} {tiny:15.1f}")


if __name__ == "__main__":
    main()
