"""``farm profiles``: list the hardware profiles and which this host matches."""

from __future__ import annotations

import json

import click

from farm.profiles import all_profiles, detect_host, matching_profiles


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (profiles, host fingerprint, matches).")
def profiles_cmd(as_json: bool) -> None:
    """List hardware profiles and which of them this host can serve."""
    host = detect_host()
    matched = {profile.name for profile in matching_profiles(host)}
    if as_json:
        payload = {
            "profiles": [
                profile.to_dict() | {"matches_this_host": profile.name in matched}
                for profile in all_profiles().values()
            ],
            "host": host.fingerprint(),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Hardware profiles")
    for column in ("profile", "backend", "fast precisions", "memory", "this host", "description"):
        table.add_column(column)
    for profile in all_profiles().values():
        memory = f"{profile.memory_gb:g} GB" if profile.memory_gb else "-"
        table.add_row(
            profile.name,
            profile.backend,
            ", ".join(profile.precisions),
            memory,
            "yes" if profile.name in matched else "",
            profile.description,
        )
    console = Console()
    console.print(table)
    gpus = ", ".join(f"{gpu.name} (sm {gpu.compute_capability})" for gpu in host.gpus) or "none"
    console.print(
        f"host {host.hostname}: {host.cpu_model}, {host.cpu_count} cores, {host.architecture}; GPUs: {gpus}"
    )
