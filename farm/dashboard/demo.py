"""``farm demo``: give a fresh farm something to show.

Uploads the zoo models to a running farm (``farm up``) and submits each on this host's profile in
every precision, then, once the first version of the MLP has been built, uploads a second,
changed version of it (a wider first hidden layer: slower, same interface) and submits it too, so
the history and compare pages have two versions to show. Everything goes through the farm's HTTP
API with :class:`~farm.client.api.FarmClient`, like any client.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from farm.client.api import FarmApiError, FarmClient, FarmClientError

DEMO_PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class DemoModel:
    """A zoo model as the demo uploads it: name, zoo options, and a version label."""

    name: str
    zoo_name: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "v1"

    def input_shapes(self, batch: int) -> dict[str, list[int]] | None:
        """Concrete input shapes at ``batch`` when the model has symbolic dims besides the batch
        (BERT's ``seq``: the zoo's default length), else ``None`` (the builder needs no help)."""
        from farm.zoo import get

        zoo_model = get(self.zoo_name)
        specs = zoo_model.input_specs(**self.options)
        sizes = {**(zoo_model.default_shapes or {}), "batch": batch}
        if all(isinstance(d, int) or d == "batch" for spec in specs for d in spec.shape):
            return None
        return {spec.name: [d if isinstance(d, int) else sizes[d] for d in spec.shape] for spec in specs}

    def onnx_bytes(self) -> bytes:
        """The model, exported by the zoo (seeded, so the same bytes every time)."""
        from farm.zoo import build_model

        return build_model(self.zoo_name, **self.options).SerializeToString()


# Small variants so the whole demo builds in minutes on a laptop CPU; --full uses the zoo defaults.
SMALL_OPTIONS: dict[str, dict[str, Any]] = {
    "mlp": {"in_features": 256, "hidden": (512, 256)},
    "resnet": {"image_size": 64, "width": 16},
    "mobilenet": {"image_size": 64, "width_mult": 0.5},
    "bert": {"num_layers": 2, "vocab_size": 1024},
    "vit": {"image_size": 64, "depth": 2},
}
CHANGED_MODEL = "mlp"


def demo_models(*, full: bool = False, only: Sequence[str] = ()) -> list[DemoModel]:
    """The first versions the demo uploads: every zoo model (or those in ``only``)."""
    from farm.zoo import list_models

    names = [m.name for m in list_models() if not only or m.name in only]
    return [DemoModel(name, name, {} if full else dict(SMALL_OPTIONS.get(name, {}))) for name in names]


def changed_version(first: DemoModel) -> DemoModel:
    """The second version of ``first``: its first hidden layer four times wider (slower, same
    inputs and outputs)."""
    options = dict(first.options)
    hidden = list(options.get("hidden") or (512, 512, 256))
    hidden[0] *= 4
    options["hidden"] = tuple(hidden)
    return DemoModel(first.name, first.zoo_name, options, label="v2-wider")


def upload(client: FarmClient, model: DemoModel, folder: Path) -> dict[str, Any]:
    """Upload ``model`` (exported into ``folder``) as a version of ``model.name``; the answer."""
    path = folder / f"{model.name}-{model.label}.onnx"
    path.write_bytes(model.onnx_bytes())
    return client.upload_model(path, name=model.name, label=model.label)


def submit(client: FarmClient, model: DemoModel, version: dict[str, Any], profile: str, precisions: Sequence[str],
           batch_sizes: Sequence[int]) -> int:  # fmt: skip
    """Submit one uploaded version (one submission per batch size when the model needs concrete
    input shapes); each precision is strict (every layer in that precision), so the speed/accuracy
    chart compares real fp16/bf16/int8 engines, not the tuner's fp32 fallbacks. The first
    submission's id."""
    shapes = {batch: model.input_shapes(batch) for batch in batch_sizes}
    groups = [list(batch_sizes)] if all(v is None for v in shapes.values()) else [[b] for b in batch_sizes]
    ids = []
    for batches in groups:
        options: dict[str, Any] = {"strict_precision": True}
        if shapes[batches[0]] is not None:
            options["input_shapes"] = shapes[batches[0]]
        submission = client.submit(
            model.name, version=version["number"], profiles=[profile], precisions=list(precisions),
            batch_sizes=batches, options=options,
        )  # fmt: skip
        click.echo(
            f"  {model.name} {version['label']}: submission {submission['id']}, {len(submission['jobs'])} jobs"
        )
        for warning in submission.get("warnings") or []:
            click.echo(f"  warning: {warning}")
        ids.append(int(submission["id"]))
    return ids[0]


def local_profile() -> str:
    """The profile of this host (what the embedded farm's worker serves)."""
    from farm.profiles import detect_host, matching_profiles

    profiles = matching_profiles(detect_host())
    return profiles[0].name if profiles else "cpu"


@click.command("demo")
@click.option("--server", envvar="FARM_SERVER", default="http://127.0.0.1:8080", show_default=True,
              help="URL of the farm (FARM_SERVER).")  # fmt: skip
@click.option(
    "--token", envvar="FARM_TOKEN", default="", help="Bearer token with the submit scope (FARM_TOKEN)."
)
@click.option("--profile", default=None, help="Profile to build for (default: this host's profile).")
@click.option("--precision", "precisions", default=",".join(DEMO_PRECISIONS), show_default=True,
              help="Comma-separated precisions.")  # fmt: skip
@click.option("--batch", "batch_sizes", default="1", show_default=True, help="Comma-separated batch sizes.")
@click.option("--models", default="", help="Comma-separated zoo models (default: all).")
@click.option("--full", is_flag=True, help="The zoo's full-size models (slower) instead of small variants.")
@click.option("--timeout", default=3600.0, show_default=True, help="Seconds to wait for the first MLP build.")
def demo_cmd(server: str, token: str, profile: str | None, precisions: str, batch_sizes: str, models: str,
             full: bool, timeout: float) -> None:  # fmt: skip
    """Submit the zoo models so the dashboard has something to show.

    Uploads every zoo model to the farm at --server and submits it on this host's profile in every
    precision; when the MLP's first version is built, uploads and submits a second, slower version
    of it, so the history and compare pages have two versions to show.
    """
    client = FarmClient(server, token or None)
    target = profile or local_profile()
    wanted = [p.strip() for p in precisions.split(",") if p.strip()]
    batches = [int(b) for b in batch_sizes.split(",") if b.strip()]
    firsts = demo_models(full=full, only=[m.strip() for m in models.split(",") if m.strip()])
    if not firsts:
        raise click.ClickException(f"no zoo model named {models!r}")
    click.echo(
        f"farm demo: {len(firsts)} models on profile {target} in {', '.join(wanted)} -> {client.server}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="farm-demo-") as folder:
            changed: tuple[DemoModel, int] | None = None
            for model in firsts:
                version = upload(client, model, Path(folder))["model_version"]
                submission_id = submit(client, model, version, target, wanted, batches)
                if model.zoo_name == CHANGED_MODEL:
                    changed = (model, submission_id)
            if changed is not None:
                first, submission_id = changed
                click.echo(
                    f"farm demo: waiting for {first.name}'s first version, the baseline of its second one"
                )
                client.wait_for_submission(submission_id, timeout=timeout, on_update=ProgressLine())
                second = changed_version(first)
                version = upload(client, second, Path(folder))["model_version"]
                submit(client, second, version, target, wanted, batches)
    except FarmApiError as exc:
        hint = ""
        if exc.status in (401, 403):
            hint = " (writes need a token with the submit scope: `farm token create demo --scope submit`, then --token)"
        raise click.ClickException(f"{exc}{hint}") from None
    except FarmClientError as exc:
        raise click.ClickException(f"{exc} (is the farm running? `farm up`)") from None
    click.echo(f"farm demo: submitted; watch them at {client.server}/")


class ProgressLine:
    """Prints a submission's job states (``2 succeeded, 1 building``) whenever they change."""

    def __init__(self) -> None:
        self.last = ""

    def __call__(self, submission: dict[str, Any]) -> None:
        states = [job["state"] for job in submission.get("jobs", [])]
        line = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
        if line != self.last:
            click.echo("  " + line)
            self.last = line
