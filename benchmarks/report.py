"""Render the benchmark results (the dict ``python -m benchmarks --json`` writes) as Markdown."""

from __future__ import annotations

from typing import Any


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def markdown(results: dict[str, Any]) -> str:
    """The tables docs/BENCHMARKS.md records."""
    fp = results["machine"]
    command = " ".join(["python -m benchmarks", *results.get("argv", [])])
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {fp['cpu_model']}, {fp['cores']} cores, ISA {' '.join(fp['isa'])}; numpy {fp['numpy']}, "
        f"{fp['blas']}, numba {fp['numba']} (threading layer {fp['threading_layer']}); onnxruntime "
        f"{results['onnxruntime']}. Load average (1/5/15 min) at start: {results.get('load_average_at_start', 'n/a')}, "
        f"at end: {results.get('load_average', 'n/a')}.",
        "",
    ]
    if "zoo" in results:
        lines += [
            "| model | batch | ours ms | ORT ms | ours / ORT | CV ours / ORT | runs | rel L2 vs ORT | arena MiB | naive MiB | lower bound MiB | arena / bound | threads |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in results["zoo"]["rows"]:
            m = r["memory"]
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['ours_ms']:.3f} | {r['ort_ms']:.3f} | {r['ratio']:.3f} | "
                f"{r['ours_cv']:.0%} / {r['ort_cv']:.0%} | {r['runs']} | {r['rel_l2']:.1e} | {_mib(m['arena_bytes'])} | "
                f"{_mib(m['naive_bytes'])} | {_mib(m['lower_bound_bytes'])} | {m['arena_over_lower_bound']:.3f} | "
                f"{r.get('threads', '')} |"
            )
        lines += ["", f"Geometric mean of ours / ORT: **{results['zoo']['geomean_ratio']:.3f}**", ""]
    if "gemm" in results:
        lines += ["| M x K x N | our tactic | ours GFLOP/s | numpy BLAS GFLOP/s | ours / numpy | int8 tactic | "
                  "int8 GOP/s | int8 / numpy |",
                  "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |"]  # fmt: skip
        for g in results["gemm"]:
            int8 = (f" {g['int8_tactic']} | {g['int8_gops']:.1f} | {g['int8_ratio']:.2f} |" if "int8_gops" in g
                    else " - | - | - |")  # fmt: skip
            lines.append(
                f"| {g['m']}x{g['k']}x{g['n']} | {g['tactic']} | {g['ours_gflops']:.1f} | {g['numpy_gflops']:.1f} | "
                f"{g['ratio']:.3f} |" + int8
            )
        lines.append("")
    if "build_time" in results:
        b = results["build_time"]
        lines += [
            f"Build time of `{b['model']}` (batch 1): cold cache {b['cold_s']:.2f} s ({b['cold_misses']} tactic "
            f"timings), warm cache {b['warm_s']:.2f} s ({b['warm_misses']} timings): warm / cold = "
            f"**{b['ratio']:.1%}**.",
            "",
        ]
    if "load_time" in results:
        lines += ["| model | import + load s | first run s | total s |", "| --- | ---: | ---: | ---: |"]
        for r in results["load_time"]:
            lines.append(
                f"| {r['model']} | {r['load_s']:.2f} | {r['first_run_s']:.2f} | {r['total_s']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)
