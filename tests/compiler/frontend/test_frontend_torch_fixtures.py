"""Every real PyTorch export in tests/fixtures/torch loads, infers shapes, and runs in the reference
with torch's own outputs (stored beside it) as the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from farm.compiler import load_onnx, reference
from farm.compiler.frontend import infer_shapes

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "torch"
MODELS = sorted(FIXTURES.glob("*.onnx"))


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_torch_fixture_matches_torch_outputs(path: Path) -> None:
    data = np.load(path.with_suffix(".npz"), allow_pickle=False)
    feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    expected = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    graph = load_onnx(path)
    infer_shapes(graph, {name: tuple(x.shape) for name, x in feeds.items()})
    outputs = reference.run(graph, feeds)
    assert set(expected) <= set(outputs)
    for name, want in expected.items():
        got = outputs[name]
        assert graph.values[name].shape == want.shape, (name, graph.values[name].shape, want.shape)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_concrete_input_shapes_make_every_shape_concrete(path: Path) -> None:
    """Shape -> Gather -> Concat -> Reshape chains resolve: no symbolic dim is left anywhere."""
    data = np.load(path.with_suffix(".npz"), allow_pickle=False)
    feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    graph = load_onnx(path)
    infer_shapes(graph, {name: tuple(x.shape) for name, x in feeds.items()})
    symbolic = {name: v.shape for name, v in graph.values.items() if not v.is_static}
    assert not symbolic, symbolic


def test_zoo_models_match_onnxruntime_at_batch_1_and_8() -> None:
    from frontend_models import ort_outputs

    from farm import zoo

    for spec in zoo.list_models():
        options = {"resnet": {"image_size": 32, "width": 8}, "mobilenet": {"image_size": 32},
                   "bert": {"num_layers": 1, "vocab_size": 100}, "vit": {"image_size": 32, "depth": 1}}
        extra = options.get(spec.name, {})
        model = zoo.build_model(spec.name, **extra)
        graph = load_onnx(model)
        for batch in (1, 8):
            feeds = zoo.sample_inputs(spec.name, batch, seed=batch, options=extra)
            infer_shapes(graph, {name: tuple(x.shape) for name, x in feeds.items()})
            assert all(v.is_static for v in graph.values.values()), spec.name
            ours = reference.run(graph, feeds)
            for name, expected in zip(graph.outputs, ort_outputs(model, feeds), strict=True):
                error = np.linalg.norm(ours[name] - expected) / np.linalg.norm(expected)
                assert error < 1e-5, (spec.name, batch, name, error)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_symbolic_inputs_give_symbolic_expressions_not_unknowns(path: Path) -> None:
    """With `batch`/`seq` inputs every shape is known: position-id slices, cls-token Expand
    (Equal/Where on shapes) and conv/pool arithmetic on symbolic sizes all resolve."""
    graph = load_onnx(path)
    unknown = {name: v.shape for name, v in graph.values.items() if v.shape is None}
    fresh = {name: v.shape for name, v in graph.values.items()
             if any(isinstance(d, str) and "_dim" in d for d in v.shape or ())}
    assert not unknown and not fresh, (unknown, fresh)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_inferred_shapes_and_dtypes_of_every_value_are_right(path: Path) -> None:
    data = np.load(path.with_suffix(".npz"), allow_pickle=False)
    feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    graph = load_onnx(path)
    infer_shapes(graph, {name: tuple(x.shape) for name, x in feeds.items()})
    produced = [o for node in graph.nodes for o in node.outputs if o]
    actual = reference.run(graph, feeds, outputs=produced)
    wrong = {
        name: (graph.values[name].dtype, graph.values[name].shape, str(value.dtype), value.shape)
        for name, value in actual.items()
        if graph.values[name].shape != value.shape or graph.values[name].dtype != str(value.dtype)
    }
    assert not wrong, wrong
