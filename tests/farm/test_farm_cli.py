"""The farm's process commands refuse bad input before starting anything."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from farm.cli import main
from farm.profiles import detect_host, get_profile


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """Each invocation reads the environment again, as a new `farm` process would."""
    from farm.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_unknown_setting_stops_farm_up_naming_it() -> None:
    result = CliRunner().invoke(main, ["up"], env={"FARM_DATABSE_URL": "sqlite:///x.db"})
    assert result.exit_code != 0
    assert "FARM_DATABSE_URL" in result.output


def test_unknown_profile_is_refused() -> None:
    result = CliRunner().invoke(main, ["worker", "--profile", "nvidia-h300"])
    assert result.exit_code != 0
    assert "unknown profile 'nvidia-h300'" in result.output


def test_profile_of_other_hardware_is_refused() -> None:
    name = "nvidia-t4"
    if get_profile(name).matches(detect_host()):
        pytest.skip("this host is a T4: the worker would really start")
    result = CliRunner().invoke(main, ["worker", "--profile", name])
    assert result.exit_code != 0
    assert "does not match profile 'nvidia-t4'" in result.output and "--any-hardware" in result.output


def test_profiles_command_lists_every_profile_as_json() -> None:
    import json

    result = CliRunner().invoke(main, ["profiles", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    by_name = {p["name"]: p for p in payload["profiles"]}
    assert by_name["cpu"]["matches_this_host"] is True
    assert payload["host"]["cpu_count"] >= 1


def test_db_upgrade_downgrade_and_current(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"FARM_DATABASE_URL": url}
    runner = CliRunner()
    result = runner.invoke(main, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    engine = create_engine(url)
    assert {"models", "model_versions", "jobs", "workers", "api_tokens"} <= set(
        inspect(engine).get_table_names()
    )
    result = runner.invoke(main, ["db", "downgrade", "base"], env=env)
    assert result.exit_code == 0, result.output
    assert "jobs" not in inspect(engine).get_table_names()
    engine.dispose()


def test_db_command_reports_a_bad_database_url() -> None:
    result = CliRunner().invoke(main, ["db", "upgrade"], env={"FARM_DATABASE_URL": "oracle://x"})
    assert result.exit_code != 0
    assert "FARM_DATABASE_URL" in result.output
