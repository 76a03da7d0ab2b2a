"""``farm zoo list`` and ``farm zoo export`` through click's CliRunner."""

from __future__ import annotations

import onnx
from click.testing import CliRunner

from farm.cli import main


def test_zoo_list_shows_every_model_and_its_inputs() -> None:
    result = CliRunner().invoke(main, ["zoo", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("mlp", "resnet", "mobilenet", "bert", "vit", "crnn", "gru_stream"):
        assert name in result.output
    assert "input_ids int64[batch, seq]" in result.output
    assert "seq=128" in result.output


def test_zoo_export_writes_the_model_with_opset_seed_and_options(tmp_path) -> None:
    out = tmp_path / "resnet.onnx"
    result = CliRunner().invoke(
        main,
        ["zoo", "export", "resnet", "-o", str(out), "--opset", "13", "--seed", "4",
         "--set", "image_size=64", "--set", "width=8", "--set", "blocks=1,1,1,1"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 13
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 64
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 4 * 2 + 3 + 1


def test_zoo_export_rejects_unknown_model_and_option(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["zoo", "export", "alexnet", "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code != 0 and "available: mlp" in result.output
    result = runner.invoke(main, ["zoo", "export", "mlp", "-o", str(tmp_path / "m.onnx"), "--set", "depth=3"])
    assert result.exit_code != 0 and "no option" in result.output
