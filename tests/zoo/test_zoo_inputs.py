"""sample_inputs: sensible values for each input kind, reproducible by seed."""

from __future__ import annotations

import numpy as np
import pytest

from farm import zoo


def test_bert_inputs_respect_vocab_mask_and_segments() -> None:
    feeds = zoo.sample_inputs("bert", 8, seed=0)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    for array in feeds.values():
        assert array.shape == (8, 128) and array.dtype == np.int64
    ids = feeds["input_ids"]
    assert ids.min() >= 1 and ids.max() < zoo.get("bert").inputs[0].high
    mask = feeds["attention_mask"]
    assert set(np.unique(mask)) <= {0, 1}
    assert (mask == 0).any(), "some padding"
    assert (mask.sum(axis=1) >= 64).all(), "every row keeps at least half its tokens"
    # padding sits at the end of each row
    assert all((np.diff(row) <= 0).all() for row in mask)
    assert set(np.unique(feeds["token_type_ids"])) == {0, 1}


def test_dims_and_options_change_the_shapes() -> None:
    feeds = zoo.sample_inputs("bert", 2, seed=0, seq=16, options={"vocab_size": 50})
    assert feeds["input_ids"].shape == (2, 16)
    assert feeds["input_ids"].max() < 50
    image = zoo.sample_inputs("resnet", 3, seed=0, options={"image_size": 64})["input"]
    assert image.shape == (3, 3, 64, 64) and image.dtype == np.float32
    assert abs(float(image.mean())) < 0.1 and 0.9 < float(image.std()) < 1.1


def test_same_seed_same_inputs() -> None:
    first = zoo.sample_inputs("bert", 4, seed=7, seq=32)
    again = zoo.sample_inputs("bert", 4, seed=7, seq=32)
    other = zoo.sample_inputs("bert", 4, seed=8, seq=32)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert not np.array_equal(first["input_ids"], other["input_ids"])


def test_unknown_dimension_is_refused() -> None:
    with pytest.raises(TypeError, match="no dimension"):
        zoo.sample_inputs("resnet", 1, seed=0, seq=12)


def test_recurrent_state_lies_in_the_tanh_range() -> None:
    feeds = zoo.sample_inputs("gru_stream", 3, seed=0, frames=7)
    assert feeds["chunk"].shape == (3, 7, 40)
    state = feeds["h0"]
    assert state.shape == (2, 3, 128) and state.dtype == np.float32
    assert -1.0 <= state.min() < -0.5 and 0.5 < state.max() <= 1.0
