"""``farm zoo``: list the reference models and export them as ONNX files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm import zoo as model_zoo


def _format_shape(shape: tuple[int | str, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


@click.group("zoo")
def zoo() -> None:
    """Reference models shaped like PyTorch's ONNX exports (seeded weights, no torch needed)."""


@zoo.command("list")
def list_cmd() -> None:
    """Show every zoo model with its inputs, outputs and options."""
    table = Table(title="Engine Farm model zoo")
    table.add_column("name", style="bold")
    table.add_column("family")
    table.add_column("description")
    table.add_column("inputs")
    table.add_column("outputs")
    table.add_column("default shapes")
    for model in model_zoo.list_models(include_recurrent=True):
        inputs = "\n".join(escape(f"{s.name} {s.dtype}{_format_shape(s.shape)}") for s in model.inputs)
        shapes = ", ".join(f"{k}={v}" for k, v in model.default_shapes.items()) or "-"
        table.add_row(model.name, model.family, model.description, inputs, "\n".join(model.outputs), shapes)
    Console().print(table)


def _parse_option(raw: str) -> tuple[str, Any]:
    """``key=value`` with the value read as int, float, a comma list of ints, or a string."""
    if "=" not in raw:
        raise click.BadParameter(f"expected KEY=VALUE, got {raw!r}", param_hint="--set")
    key, value = raw.split("=", 1)
    parsed: Any = value
    for convert in (int, float):
        try:
            parsed = convert(value)
            break
        except ValueError:
            continue
    else:
        if "," in value:
            try:
                parsed = tuple(int(v) for v in value.split(","))
            except ValueError:
                parsed = value
    return key.strip(), parsed


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the model (default: NAME.onnx).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13..21).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A model option, e.g. --set image_size=64 --set width=16 (see `farm zoo list`).")
def export_cmd(name: str, output: Path | None, opset: int, seed: int, settings: tuple[str, ...]) -> None:
    """Write zoo model NAME as an ONNX file."""
    try:
        model = model_zoo.get(name)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="NAME") from None
    options = dict(_parse_option(raw) for raw in settings)
    path = output or Path(f"{name}.onnx")
    try:
        model_zoo.export(model.name, path, seed=seed, opset=opset, **options)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    size_mb = path.stat().st_size / 2**20
    click.echo(f"wrote {path} ({model.name}, opset {opset}, seed {seed}, {size_mb:.1f} MiB)")

