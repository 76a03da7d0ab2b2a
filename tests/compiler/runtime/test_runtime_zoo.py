"""End to end on (small) zoo models: build -> save -> load -> run against ONNX Runtime, at several
batch sizes of one engine (no rebuild)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm import zoo
from farm.compiler.accuracy import compare_outputs, onnxruntime_outputs
from farm.compiler.builder import BuilderConfig, build
from farm.compiler.engine import Engine

# Small variants keep CI fast (2 cores, cold numba cache).
SMALL = {
    "mlp": ({}, {}),
    "resnet": ({"image_size": 32, "width": 8, "num_classes": 10}, {}),
    "mobilenet": ({"image_size": 32, "width_mult": 0.25, "num_classes": 10}, {}),
    "bert": ({"num_layers": 1, "hidden": 64, "num_heads": 2, "intermediate": 128, "vocab_size": 128}, {"seq": 16}),
    "vit": ({"image_size": 32, "patch_size": 8, "dim": 48, "depth": 1, "num_heads": 2, "mlp_hidden": 96,
             "num_classes": 10}, {}),
}  # fmt: skip


# Timed tuning compiles and runs every candidate tactic: keep it for the small models; the CNNs
# use the heuristic choice (their tactics are validated by the kernels' own tests).
TUNING_LEVEL = {"mlp": 1, "bert": 1, "vit": 1, "resnet": 0, "mobilenet": 0}


def test_every_zoo_model_is_covered() -> None:
    assert sorted(SMALL) == sorted(m.name for m in zoo.list_models())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_zoo_model_matches_onnxruntime_across_batches(name: str, tmp_path: Path) -> None:
    options, dims = SMALL[name]
    model = zoo.build_model(name, **options)
    onnx_path = tmp_path / f"{name}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    sample = zoo.sample_inputs(name, 2, seed=0, options=options, **dims)
    config = BuilderConfig(
        tuning_level=TUNING_LEVEL[name],
        batch_range=(1, 2, 4),
        input_shapes={k: list(v.shape) for k, v in sample.items()},
    )
    engine = build(onnx_path, "cpu", config)
    engine.save(tmp_path / f"{name}.engine")
    loaded = Engine.load(tmp_path / f"{name}.engine")
    attention = [n for n in loaded.graph.nodes if n.op_type == "Attention"]
    if name in ("bert", "vit"):  # each reads its fused QKV projection packed, after a round trip too
        assert attention and all(n.attrs.get("packed_qkv") == 1 and not any(n.inputs[1:3]) for n in attention)
    # batch 1 again with new data: the steps bound at batch 1 must read this run's values
    for batch, seed in ((1, 1), (4, 4), (3, 3), (1, 7)):
        feeds = zoo.sample_inputs(name, batch, seed=seed, options=options, **dims)
        want = onnxruntime_outputs(onnx_path, feeds)
        got = loaded.run(feeds)
        for metric in compare_outputs(got, want):
            assert metric.rel_l2 <= 1e-5, f"{name} batch {batch}: {metric}"
    assert engine.report["memory"]["arena_bytes"] <= engine.report["memory"]["naive_bytes"]
