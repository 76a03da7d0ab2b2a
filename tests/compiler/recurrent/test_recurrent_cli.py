"""``farm bench --state``: a stateful model (gru_stream) timed call after call with its state
carried, through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from farm import zoo
from farm.cli import main as farm_main
from farm.compiler import BuilderConfig, build


def test_bench_times_a_stateful_model_call_after_call(tmp_path: Path) -> None:
    feeds = zoo.sample_inputs("gru_stream", 1, seed=0)
    engine = build(zoo.build_model("gru_stream"), "cpu",
                   BuilderConfig(tuning_level=0, input_shapes={k: list(v.shape) for k, v in feeds.items()}))  # fmt: skip
    path = tmp_path / "gru_stream.engine"
    engine.save(path)
    args = ["bench", str(path), "--duration-s", "0.05", "--iterations", "3", "--warmup-ms", "1", "--json"]
    result = CliRunner().invoke(farm_main, [*args, "--state", "auto"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["latency"]["iterations"] >= 3
    named = CliRunner().invoke(farm_main, [*args, "--state", "h0=h"])
    assert named.exit_code == 0, named.output
    wrong = CliRunner().invoke(farm_main, [*args, "--state", "h0=logits"])
    assert wrong.exit_code != 0 and "differ in dtype or shape" in wrong.output
