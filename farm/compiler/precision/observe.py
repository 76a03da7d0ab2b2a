"""Run an (optimized) IR graph fast and read any of its tensors: an FP32 engine of a copy of
the graph whose outputs are the wanted tensors.

Calibration, the accuracy-budget reference and the sensitivity analysis run the model over
hundreds of samples; the numpy reference interpreter is far too slow for that (ResNet-18 at
64x64: ~2.7 s per image on the 2-core machine), the FP32 engine is what we ship anyway and
matches the reference to 1e-5. The engine is built untimed (tuning level 0) and unoptimized (the
graph given is already optimized, or must stay as it is, e.g. a fake-quantized emulation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from farm.compiler.ir import Graph


class GraphRunner:
    """Runs ``graph`` and returns ``tensors`` (names of any values), batch by batch."""

    def __init__(
        self,
        graph: Graph,
        tensors: Iterable[str] | None = None,
        *,
        max_batch: int = 32,
        example: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """``example`` feeds fix the non-batch dims the graph leaves symbolic (e.g. ``seq``)."""
        from farm.compiler.builder import BuilderConfig, build

        wanted = list(dict.fromkeys(tensors if tensors is not None else graph.outputs))
        self.tensors = wanted
        self.from_feeds = [t for t in wanted if t in graph.inputs]
        copy = graph.copy()
        for node in copy.nodes:
            if node.op_type == "Concat":  # a tensor we read must not become a view of the concat
                node.attrs.pop("elide", None)
            node.precision = None
        copy.outputs = [t for t in wanted if t not in graph.inputs]
        self.max_batch = max_batch
        shapes = {k: [max_batch, *np.shape(v)[1:]] for k, v in (example or {}).items() if k in graph.inputs}
        config = BuilderConfig(
            tuning_level=0, optimize=False, batch_range=(1, max_batch, max_batch), input_shapes=shapes
        )
        self.engine = build(copy, "cpu", config)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The wanted tensors for ``feeds`` (any batch size: split into engine-sized chunks)."""
        total = len(next(iter(feeds.values())))
        parts = []
        for start in range(0, total, self.max_batch):
            chunk = {k: v[start : start + self.max_batch] for k, v in feeds.items()}
            out = dict(self.engine.run(chunk))
            out.update({t: chunk[t] for t in self.from_feeds})
            parts.append(out)
        return {t: np.concatenate([p[t] for p in parts]) for t in self.tensors}
