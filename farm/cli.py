"""The ``farm`` command.

Subcommands are loaded lazily from the module that owns them, so ``farm api`` does not import
numba and ``farm build`` does not import Flask. Each entry maps a command name to
``"module:attribute"``, where the attribute is a click command or group.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

COMMANDS: dict[str, tuple[str, str]] = {
    # the compiler, usable on its own (like trtexec / polygraphy)
    "build": ("farm.compiler.cli:build_cmd", "Compile an ONNX model into an optimized engine."),
    "run": ("farm.compiler.cli:run_cmd", "Run an engine on inputs from an .npz file."),
    "bench": ("farm.compiler.cli:bench_cmd", "Measure an engine's latency and throughput."),
    "inspect": (
        "farm.compiler.cli:inspect_cmd",
        "Show an engine's layers, tactics, precisions and memory plan.",
    ),
    "compare": ("farm.compiler.cli:compare_cmd", "Compare an engine's outputs with ONNX Runtime's."),
    "warmup": (
        "farm.compiler.cli:warmup_cmd",
        "Compile the kernels ahead of the first build (numba's on-disk cache).",
    ),
    "zoo": ("farm.zoo.cli:zoo", "List and export the reference models."),
    # the farm
    "up": ("farm.services:up_cmd", "Start the whole farm on this host (API + a local worker)."),
    "api": ("farm.services:api_cmd", "Start the API and dashboard server."),
    "worker": ("farm.services:worker_cmd", "Start a worker for this host's profiles."),
    "db": ("farm.db.cli:db", "Database migrations."),
    "profiles": ("farm.profiles.cli:profiles_cmd", "List hardware profiles and which this host matches."),
    # the client
    "submit": (
        "farm.client.cli:submit_cmd",
        "Submit a model to a farm; optionally wait and fail on regression.",
    ),
    "results": ("farm.client.cli:results_cmd", "Show a submission's results."),
    "download": ("farm.client.cli:download_cmd", "Download engines and verify their sha256."),
    "diff": ("farm.client.cli:diff_cmd", "Compare two engines or two model versions on a farm."),
    "token": ("farm.api.tokens_cli:token", "Create, list and revoke API tokens."),
    "demo": ("farm.dashboard.demo:demo_cmd", "Submit the zoo models so the dashboard has something to show."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked.

    ``farm --help`` lists every command from the table without importing any of them.
    """

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._lazy[name][1]) for name in sorted(self._lazy)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in self._lazy:
            return cmd
        module_name, attr = self._lazy[cmd_name][0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise click.UsageError(f"'farm {cmd_name}' is not available in this installation") from exc
            raise
        found = getattr(module, attr)
        if not isinstance(found, click.Command):
            raise TypeError(f"{module_name}:{attr} is not a click command")
        return found


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="engine-farm", prog_name="farm")
def main() -> None:
    """Engine Farm: build, benchmark and compare inference engines."""


if __name__ == "__main__":
    main()
