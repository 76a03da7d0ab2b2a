"""Recurrent models and temporal fusion.

1. crnn and gru_stream from the zoo: our engine against ONNX Runtime (``zoo_vs_ort.compare_model``).
2. Streaming: gru_stream called chunk after chunk with its state carried (our
   :class:`StreamingSession` against ORT fed its own previous state), interleaved.
3. The fusion factor: each recurrent layer of those models run by the fused tactic
   (``cpu.recurrent.fused``, and ``fused_concurrent`` for bidirectional layers) and by the
   step-by-step form (``cpu.recurrent.stepwise``: per-step GEMMs and numpy gates) on the same
   inputs, interleaved; factor = median(step-by-step) / median(fused).

Run alone: ``python -m benchmarks.recurrent``; ``make bench`` runs it as the ``recurrent`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
import numpy as np

from benchmarks.zoo_vs_ort import CROSS_RUNTIME_BLOCK_MS, ModelResult, build_zoo_engine, compare_model
from farm.compiler.accuracy import compare_arrays, onnxruntime_session
from farm.compiler.engine.benchmark import measure_interleaved
from farm.compiler.engine.streaming import StreamingSession
from farm.compiler.kernels import get_tactic
from farm.compiler.kernels.threads import available_cores, configure_threads
from farm.compiler.tuner import MemoryTimingCache, TimingCache

MODELS = ("crnn", "gru_stream")
FUSED = ("cpu.recurrent.fused", "cpu.recurrent.fused_concurrent")
STEPWISE = "cpu.recurrent.stepwise"


@dataclass
class StreamingResult:
    """gru_stream called chunk after chunk with its state carried."""

    model: str
    batch: int
    frames: int
    ours_ms: float
    ort_ms: float
    runs: int
    rel_l2: float

    @property
    def ratio(self) -> float:
        return self.ours_ms / self.ort_ms


@dataclass
class FusionResult:
    """One recurrent layer: fused tactic vs the step-by-step form."""

    model: str
    layer: str
    op_type: str
    shape: str  # seq x batch x input -> hidden (directions)
    fused_tactic: str
    fused_ms: float
    stepwise_ms: float

    @property
    def factor(self) -> float:
        return self.stepwise_ms / self.fused_ms


def compare_models(
    cache: TimingCache, *, batches: tuple[int, ...], tuning_level: int, duration_s: float, iterations: int
) -> list[ModelResult]:
    """crnn and gru_stream at each batch: ours vs ORT (see ``benchmarks/zoo_vs_ort.py``)."""
    return [
        compare_model(
            name, batch, cache, tuning_level=tuning_level, duration_s=duration_s, iterations=iterations
        )
        for name in MODELS
        for batch in batches
    ]


def compare_streaming(
    cache: TimingCache, *, batch: int = 1, tuning_level: int, duration_s: float, iterations: int
) -> StreamingResult:
    """Time gru_stream call after call with the state carried (ours vs ORT, interleaved)."""
    engine, onnx_bytes, feeds = build_zoo_engine("gru_stream", batch, cache, tuning_level)
    session = onnxruntime_session(onnx_bytes, threads=available_cores())
    chunk = feeds["chunk"]
    stream = StreamingSession(engine, {"h0": "h"})
    ort_state = {"h0": np.zeros_like(feeds["h0"])}

    def ort_step() -> None:
        _, ort_state["h0"] = session.run(["logits", "h"], {"chunk": chunk, "h0": ort_state["h0"]})

    # Same number of steps from the same zero state before comparing the carried states.
    for _ in range(5):
        stream.step({"chunk": chunk})
        ort_step()
    rel_l2 = compare_arrays("h", stream.state["h0"], ort_state["h0"]).rel_l2
    stats = measure_interleaved(
        {"ours": lambda: stream.step({"chunk": chunk}), "ort": ort_step},
        batch=batch, warmup_ms=200, duration_s=duration_s, iterations=iterations,
        block_ms=CROSS_RUNTIME_BLOCK_MS,
    )  # fmt: skip
    return StreamingResult(
        "gru_stream", batch, int(chunk.shape[1]), stats["ours"].median_ms, stats["ort"].median_ms,
        len(stats["ours"].samples_ms), rel_l2,
    )  # fmt: skip


def _layer_inputs(engine: Any, node: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    """The layer's real inputs: the engine's graph run by the reference up to the layer."""
    from farm.compiler import reference

    names = [n for n in node.inputs if n]
    values = reference.run(engine.graph, feeds, outputs=names)
    return [values[n] if n else None for n in node.inputs]


def fusion_factors(*, batch: int = 1, duration_s: float, iterations: int) -> list[FusionResult]:
    """Every LSTM/GRU layer of crnn and gru_stream: fused tactic(s) vs step by step, interleaved."""
    results = []
    for name in MODELS:
        engine, _, feeds = build_zoo_engine(name, batch, MemoryTimingCache(), 0)
        shaped = engine.graph.copy()
        from farm.compiler.frontend import infer_shapes

        infer_shapes(shaped, {k: tuple(v.shape) for k, v in feeds.items()})
        for node in (n for n in shaped.nodes if n.op_type in ("LSTM", "GRU", "RNN")):
            inputs = _layer_inputs(engine, node, feeds)
            outputs = [np.empty(tuple(int(d) for d in shaped.values[o].shape or ()), np.float32) if o else None
                       for o in node.outputs]  # fmt: skip
            runners: dict[str, Any] = {}
            for tactic_name in (*FUSED, STEPWISE):
                tactic = get_tactic(tactic_name)
                if not tactic.supports(node, shaped):
                    continue
                prepared = tactic.prepare(node, shaped)
                ins = [None if i in prepared.replaces else x for i, x in enumerate(inputs)]
                runners[tactic_name] = lambda t=tactic, i=ins, p=prepared, n=node, o=outputs: t.run(
                    n, i, o, p
                )
            stats = measure_interleaved(runners, batch=batch, warmup_ms=200, duration_s=duration_s,
                                        iterations=iterations)  # fmt: skip
            fused = min((t for t in FUSED if t in stats), key=lambda t: stats[t].median_ms)
            x_shape = shaped.values[node.inputs[0]].shape or ()
            hidden = int(node.attr("hidden_size"))
            direction = str(node.attr("direction", "forward"))
            results.append(
                FusionResult(
                    name,
                    node.name,
                    node.op_type,
                    f"{'x'.join(map(str, x_shape))} -> {hidden} ({direction})",
                    fused,
                    stats[fused].median_ms,
                    stats[STEPWISE].median_ms,
                )  # fmt: skip
            )
    return results


@click.command()
@click.option("--batches", default="1,8", show_default=True)
@click.option("--duration-s", type=float, default=2.0, show_default=True)
@click.option("--iterations", type=int, default=20, show_default=True)
@click.option("--tuning-level", type=int, default=2, show_default=True)
def main(batches: str, duration_s: float, iterations: int, tuning_level: int) -> None:
    """Print the recurrent benchmark tables (models vs ORT, streaming, fusion factor)."""
    from rich.console import Console

    configure_threads()
    console = Console(width=200)
    for table in run_all(tuple(int(b) for b in batches.split(",")), duration_s, iterations, tuning_level)[1]:
        console.print(table)


def run_all(
    batches: tuple[int, ...], duration_s: float, iterations: int, tuning_level: int
) -> tuple[dict[str, Any], list[Any]]:
    """Every section; returns (JSON-able results, rich tables)."""
    from rich.table import Table

    cache = MemoryTimingCache()
    models = compare_models(cache, batches=batches, tuning_level=tuning_level, duration_s=duration_s,
                            iterations=iterations)  # fmt: skip
    t1 = Table(title="Recurrent zoo models: ours vs ONNX Runtime (median latency, interleaved)")
    for col in ("model", "batch", "ours ms", "ORT ms", "ratio", "rel L2", "build s"):
        t1.add_column(col, justify="left" if col == "model" else "right")
    for r in models:
        t1.add_row(r.model, str(r.batch), f"{r.ours_ms:.3f}", f"{r.ort_ms:.3f}", f"{r.ratio:.3f}", f"{r.rel_l2:.1e}",
                   f"{r.build_s:.1f}")  # fmt: skip
    stream = compare_streaming(cache, tuning_level=tuning_level, duration_s=duration_s, iterations=iterations)
    t2 = Table(title="Streaming gru_stream: call after call, state carried (median per chunk)")
    for col in ("batch", "frames/chunk", "ours ms", "ORT ms", "ratio", "state rel L2 after 5 chunks"):
        t2.add_column(col, justify="right")
    t2.add_row(str(stream.batch), str(stream.frames), f"{stream.ours_ms:.3f}", f"{stream.ort_ms:.3f}",
               f"{stream.ratio:.3f}", f"{stream.rel_l2:.1e}")  # fmt: skip
    fusion = fusion_factors(duration_s=duration_s / 2, iterations=iterations)
    t3 = Table(title="Temporal fusion: fused recurrent tactic vs step by step (batch 1, median, interleaved)")
    for col in (
        "model",
        "layer",
        "X shape -> hidden",
        "fused tactic",
        "fused ms",
        "step-by-step ms",
        "factor",
    ):
        t3.add_column(col, justify="left" if col in ("model", "layer", "fused tactic") else "right")
    for f in fusion:
        t3.add_row(f.model, f.layer, f.shape, f.fused_tactic, f"{f.fused_ms:.3f}", f"{f.stepwise_ms:.3f}",
                   f"{f.factor:.1f}x")  # fmt: skip
    results = {
        "models": [r.to_json() for r in models],
        "streaming": dict(stream.__dict__, ratio=stream.ratio),
        "fusion": [dict(f.__dict__, factor=f.factor) for f in fusion],
    }
    return results, [t1, t2, t3]


if __name__ == "__main__":
    main()
