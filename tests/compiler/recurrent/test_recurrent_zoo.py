"""The recurrent zoo models built as engines: crnn (CNN + 2-layer bidirectional LSTM + CTC
log-probs) and gru_stream (2-layer GRU with carried state) against ONNX Runtime in FP32, and the
streaming session that carries gru_stream's state from call to call."""

from __future__ import annotations

import numpy as np
import pytest

from farm import zoo
from farm.compiler import BuilderConfig, build
from farm.compiler.accuracy import compare_arrays, onnxruntime_session
from farm.compiler.builder import batch_axes, random_feeds
from farm.compiler.engine.streaming import StateError, StreamingSession, detect_state_pairs, parse_state_pairs


def _engine_and_session(name: str, batch_range: tuple[int, int, int], **dims: int):  # type: ignore[no-untyped-def]
    model = zoo.build_model(name)
    feeds = zoo.sample_inputs(name, batch_range[1], seed=3, **dims)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    engine = build(model, "cpu", BuilderConfig(tuning_level=0, batch_range=batch_range, input_shapes=shapes))
    return engine, onnxruntime_session(model.SerializeToString(), threads=1)


# gru_stream's state h0 is [layers, batch, hidden]: its batch symbol is at axis 1 there, and the
# builder's batch range follows the symbol wherever it appears.
@pytest.mark.parametrize(
    ("name", "batch_range", "batches"), [("crnn", (1, 2, 3), (2, 3, 1)), ("gru_stream", (1, 2, 3), (2, 3, 1))]
)
def test_recurrent_zoo_model_matches_onnxruntime(
    name: str, batch_range: tuple[int, int, int], batches: tuple[int, ...]
) -> None:
    engine, session = _engine_and_session(name, batch_range)
    tactics = {k.node.op_type: k.tactic.name for k in engine.kernels}
    assert tactics.get("LSTM", tactics.get("GRU", "")).startswith("cpu.recurrent.fused"), tactics
    for batch in batches:
        feeds = zoo.sample_inputs(name, batch, seed=10 + batch)
        got = engine.run(feeds)
        names = [o.name for o in session.get_outputs()]
        want = dict(zip(names, session.run(names, feeds), strict=True))
        for key in names:
            assert compare_arrays(key, got[key], want[key]).rel_l2 <= 1e-5, (name, batch, key)


def test_streaming_session_carries_state_without_copies() -> None:
    engine, session = _engine_and_session("gru_stream", (2, 2, 2))
    assert detect_state_pairs(engine) == {"h0": "h"}
    stream = StreamingSession(engine)
    chunks = [zoo.sample_inputs("gru_stream", 2, seed=20 + i)["chunk"] for i in range(3)]
    state = np.zeros((2, 2, 128), np.float32)
    for chunk in chunks:
        out = stream.step({"chunk": chunk})
        assert stream.state["h0"] is out["h"]  # the output array itself is the next state
        logits, state = session.run(["logits", "h"], {"chunk": chunk, "h0": state})
        assert compare_arrays("logits", out["logits"], logits).rel_l2 <= 1e-5
        assert compare_arrays("h", out["h"], state).rel_l2 <= 1e-5
    # Three chunks with the state carried = one pass over the whole sequence.
    whole = np.concatenate(chunks, axis=1)
    _, h_whole = session.run(["logits", "h"], {"chunk": whole, "h0": np.zeros((2, 2, 128), np.float32)})
    assert compare_arrays("h", stream.state["h0"], h_whole).rel_l2 <= 1e-5
    stream.reset()
    assert stream.state == {} and stream.steps == 0


def test_state_pairs_are_checked() -> None:
    engine, _ = _engine_and_session("gru_stream", (1, 1, 1))
    assert parse_state_pairs("h0=h") == {"h0": "h"}
    with pytest.raises(StateError, match="INPUT=OUTPUT"):
        parse_state_pairs("h0")
    with pytest.raises(StateError, match="differ in dtype or shape"):
        StreamingSession(engine, {"h0": "logits"})
    with pytest.raises(StateError, match="not an input"):
        StreamingSession(engine, {"x": "h"})


def test_batch_range_follows_the_batch_symbol_off_axis_0() -> None:
    """Only the chunk's frames are given: the batch range binds ``batch`` in chunk[batch, frames, 40]
    and in h0[layers, batch, hidden] alike, and random feeds at a batch set both axes."""
    model = zoo.build_model("gru_stream")
    engine = build(
        model,
        "cpu",
        BuilderConfig(tuning_level=0, batch_range=(1, 2, 4), input_shapes={"chunk": [1, 16, 40]}),
    )
    h0 = next(b for b in engine.inputs if b.name == "h0")
    assert (h0.min_shape, h0.opt_shape, h0.max_shape) == ([2, 1, 128], [2, 2, 128], [2, 4, 128])
    assert batch_axes(engine.inputs) == {"chunk": [0], "h0": [1]}
    feeds = random_feeds(engine, batch=3)
    assert feeds["chunk"].shape == (3, 16, 40) and feeds["h0"].shape == (2, 3, 128)
    assert engine.run(feeds)["logits"].shape[0] == 3
    with pytest.raises(ValueError, match="batch 5 is outside the engine's range 1..4"):
        random_feeds(engine, batch=5)
