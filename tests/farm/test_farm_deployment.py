"""The deployment files stay true: compose runs real `farm` commands with known settings; docs list every setting.

Docker cannot run here, so docker-compose.yml is checked by reading it; the e2e tests run the same
commands (`farm db upgrade`, `farm api`, `farm worker`) without Docker.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from farm.cli import main
from farm.config import known_variables
from farm.profiles import all_profiles

REPO = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert {"redis", "postgres", "migrate", "api", "worker-cpu", "worker-gpu"} <= set(compose["services"])
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_command
    assert compose["services"]["migrate"]["restart"] == "no"
    for worker in ("api", "worker-cpu", "worker-gpu"):
        assert (
            compose["services"][worker]["depends_on"]["migrate"]["condition"]
            == "service_completed_successfully"
        )


def test_workers_and_api_share_the_artifact_volume(compose: dict[str, Any]) -> None:
    mounts = {name: compose["services"][name]["volumes"] for name in ("api", "worker-cpu", "worker-gpu")}
    assert all("artifacts:/var/lib/farm/artifacts" in volumes for volumes in mounts.values())
    assert "artifacts" in compose["volumes"]


def test_gpu_worker_reserves_an_nvidia_device_and_takes_its_profile_from_the_environment(
    compose: dict[str, Any],
) -> None:
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    match = re.fullmatch(r"\$\{(\w+):-([\w-]+)\}", gpu["environment"]["FARM_PROFILE"])
    assert match is not None
    assert match.group(2) in all_profiles()


def test_every_compose_command_is_a_farm_command(compose: dict[str, Any]) -> None:
    runner = CliRunner()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "farm":
            continue
        args = command[1:] if isinstance(command, list) else shlex.split(command)[1:]
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, f"{name}: farm {' '.join(args)}: {result.output}"


def test_compose_sets_only_known_settings(compose: dict[str, Any]) -> None:
    known = set(known_variables())
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        for variable in environment:
            if variable.startswith("FARM_"):
                assert variable in known, variable


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    assert readme.lstrip().startswith("# Engine Farm")
    head = readme[:400]
    assert "make up" in head and "make test" in head
    documented = set(re.findall(r"^\| `(FARM_\w+)` \|", readme, flags=re.MULTILINE))
    assert documented == set(known_variables())


def test_ci_entry_point_runs_make_test_with_ci() -> None:
    script = (REPO / ".ci" / "run").read_text()
    assert "CI=true" in script and "make test" in script
