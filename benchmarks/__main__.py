"""``python -m benchmarks`` (``make bench``): the numbers docs/BENCHMARKS.md records.

1. every zoo model at batch 1 and 8: our engine vs ONNX Runtime, interleaved, ratio of medians,
   geometric mean; 2. GEMM throughput of our GEMM tactic vs numpy's BLAS at three sizes;
3. cold vs warm timing-cache build time; 4. arena size vs naive sum and lower bound.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from benchmarks.build_time import cold_vs_warm
from benchmarks.gemm import SIZES, compare_gemm
from benchmarks.load_time import load_time
from benchmarks.report import markdown
from benchmarks.zoo_vs_ort import build_zoo_engine, compare_model, geometric_mean
from farm import zoo
from farm.compiler.engine.fingerprint import device_fingerprint
from farm.compiler.kernels.threads import configure_threads
from farm.compiler.tuner import MemoryTimingCache

console = Console(width=200)


@click.command()
@click.option("--models", default="", help="Comma-separated zoo models (default: all).")
@click.option("--batches", default="1,8", show_default=True)
@click.option(
    "--duration-s", type=float, default=2.0, show_default=True, help="Minimum timed seconds per runner."
)
@click.option("--iterations", type=int, default=20, show_default=True, help="Minimum timed runs per runner.")
@click.option("--tuning-level", type=int, default=2, show_default=True)
@click.option(
    "--build-model", default="resnet", show_default=True, help="Model for the cold/warm build timing."
)
@click.option(
    "--skip", default="", help="Comma-separated sections to skip: zoo,gemm,build,load,recurrent,dashboard."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON."
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the tables as Markdown.",
)
def main(models: str, batches: str, duration_s: float, iterations: int, tuning_level: int, build_model: str,
         skip: str, json_path: Path | None, markdown_path: Path | None) -> None:  # fmt: skip
    """Run the benchmarks and print the tables."""
    threads = configure_threads()
    fp = device_fingerprint("cpu")
    console.print(f"machine: {fp['cpu_model']}, {fp['cores']} cores ({threads} threads), ISA {' '.join(fp['isa'])}; "
                  f"numpy {fp['numpy']}, {fp['blas']}, numba {fp['numba']} [{fp['threading_layer']}]")  # fmt: skip
    import onnxruntime

    console.print(f"onnxruntime {onnxruntime.__version__}; python {platform.python_version()}; "
                  f"command: python -m benchmarks {' '.join(sys.argv[1:])}")  # fmt: skip
    skipped = set(filter(None, skip.split(",")))
    results: dict = {"machine": fp, "onnxruntime": onnxruntime.__version__, "argv": sys.argv[1:]}
    started = time.perf_counter()
    results["load_average_at_start"] = " ".join(f"{x:.1f}" for x in os.getloadavg())

    if "zoo" not in skipped:
        names = [m for m in models.split(",") if m] or [m.name for m in zoo.list_models()]
        cache = MemoryTimingCache()
        rows = []
        table = Table(title="Zoo models: ours vs ONNX Runtime (median latency, interleaved)")
        for col in ("model", "batch", "ours ms", "ORT ms", "ratio", "CV ours/ORT", "runs", "rel L2",
                    "build s", "arena", "naive", "lower bound", "arena/bound", "threads"):  # fmt: skip
            table.add_column(col, justify="left" if col == "model" else "right")
        for name in names:
            for batch in (int(b) for b in batches.split(",")):
                r = compare_model(name, batch, cache, tuning_level=tuning_level, duration_s=duration_s,
                                  iterations=iterations)  # fmt: skip
                rows.append(r)
                mem = r.memory
                table.add_row(r.model, str(r.batch), f"{r.ours_ms:.3f}", f"{r.ort_ms:.3f}", f"{r.ratio:.3f}",
                              f"{r.ours_cv:.0%}/{r.ort_cv:.0%}", str(r.runs), f"{r.rel_l2:.1e}", f"{r.build_s:.1f}",
                              f"{mem['arena_bytes'] / 2**20:.2f} MiB", f"{mem['naive_bytes'] / 2**20:.2f} MiB",
                              f"{mem['lower_bound_bytes'] / 2**20:.2f} MiB", f"{mem['arena_over_lower_bound']:.3f}",
                              r.threads)  # fmt: skip
                console.print(f"  {r.model} b{r.batch}: ratio {r.ratio:.3f}")
        console.print(table)
        gm = geometric_mean([r.ratio for r in rows])
        worst = max(rows, key=lambda r: r.ratio)
        console.print(
            f"geometric mean of ratios: {gm:.3f}; worst: {worst.model} b{worst.batch} {worst.ratio:.3f}"
        )
        results["zoo"] = {"rows": [r.to_json() for r in rows], "geomean_ratio": gm}

    if "gemm" not in skipped:
        table = Table(title="GEMM throughput (GFLOP/s, INT8 GOP/s; median, interleaved)")
        columns = ("M x K x N", "our tactic", "ours", "numpy BLAS", "ours / numpy", "int8 tactic", "int8",
                   "int8 / numpy")  # fmt: skip
        for col in columns:
            table.add_column(col, justify="right")
        gemm_rows = []
        for m, k, n in SIZES:
            g = compare_gemm(m, k, n, duration_s=duration_s / 2, tuning_level=tuning_level)
            gemm_rows.append(dict(g.__dict__, ratio=g.ratio, int8_ratio=g.int8_ratio))
            table.add_row(
                f"{m}x{k}x{n}", g.tactic, f"{g.ours_gflops:.1f}", f"{g.numpy_gflops:.1f}", f"{g.ratio:.3f}",
                g.int8_tactic, f"{g.int8_gops:.1f}", f"{g.int8_ratio:.2f}",
            )  # fmt: skip
        console.print(table)
        results["gemm"] = gemm_rows

    if "build" not in skipped:
        b = cold_vs_warm(build_model, tuning_level=tuning_level)
        console.print(f"build time of {b.model}: cold {b.cold_s:.2f} s ({b.cold_misses} timings), warm {b.warm_s:.2f} s "
                      f"({b.warm_misses} timings), warm/cold {b.ratio:.1%}")  # fmt: skip
        results["build_time"] = dict(b.__dict__, ratio=b.ratio)

    if "load" not in skipped:
        names = [m for m in models.split(",") if m] or [m.name for m in zoo.list_models()]
        table = Table(title="Engine load in a fresh process (numba cache warm): import + load, first run")
        for col in ("model", "import + load s", "first run s", "total s"):
            table.add_column(col, justify="right")
        load_rows = []
        for name in names:
            engine, _, feeds = build_zoo_engine(name, 1, MemoryTimingCache(), 0)
            r = load_time(name, engine, feeds)
            load_rows.append(dict(r.__dict__, total_s=r.total_s))
            table.add_row(name, f"{r.load_s:.2f}", f"{r.first_run_s:.2f}", f"{r.total_s:.2f}")
        console.print(table)
        results["load_time"] = load_rows

    if "recurrent" not in skipped:  # crnn/gru_stream vs ORT, streaming state, temporal fusion factor
        from benchmarks.recurrent import run_all as run_recurrent

        batch_sizes = tuple(int(b) for b in batches.split(","))
        results["recurrent"], tables = run_recurrent(batch_sizes, duration_s, iterations, tuning_level)
        for table in tables:
            console.print(table)

    if "dashboard" not in skipped:  # every dashboard page's server time with 10,000 stored results
        from benchmarks.dashboard import markdown as dashboard_markdown
        from benchmarks.dashboard import run as run_dashboard

        results["dashboard"] = run_dashboard()
        console.print(dashboard_markdown(results["dashboard"]))

    console.print(f"total {time.perf_counter() - started:.0f} s")
    results["load_average"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2, default=str))
    if markdown_path is not None:
        markdown_path.write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()
