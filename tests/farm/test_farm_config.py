"""Settings: embedded defaults, service URLs, and errors that name the variable."""

from __future__ import annotations

import pytest

from farm.config import SettingsError, known_variables, load_settings, sqlite_path


def test_defaults_are_the_embedded_deployment() -> None:
    settings = load_settings({})
    assert settings.database_url == "sqlite:///./farm-data/farm.db"
    assert settings.broker_url == "sqla+sqlite:///./farm-data/broker.db"
    assert settings.artifacts_url == "./farm-data/artifacts"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)


def test_service_urls_get_the_psycopg_driver() -> None:
    settings = load_settings(
        {
            "FARM_DATABASE_URL": "postgresql://farm:secret@db:5432/farm",
            "FARM_BROKER_URL": "redis://redis:6379/0",
        }
    )
    assert settings.sqlalchemy_url == "postgresql+psycopg://farm:secret@db:5432/farm"
    assert settings.celery_broker_url == "redis://redis:6379/0"


def test_values_are_parsed_from_strings() -> None:
    settings = load_settings(
        {"FARM_PORT": "9090", "FARM_PUBLIC_READ": "false", "FARM_PROFILE": "nvidia-h200, cpu"}
    )
    assert settings.port == 9090
    assert settings.public_read is False
    assert settings.profiles == ["nvidia-h200", "cpu"]


def test_unknown_variable_is_named() -> None:
    with pytest.raises(SettingsError, match="FARM_DATABSE_URL"):
        load_settings({"FARM_DATABSE_URL": "sqlite:///x.db"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FARM_PORT", "eighty"),
        ("FARM_PORT", "70000"),
        ("FARM_DATABASE_URL", "mysql://localhost/farm"),
        ("FARM_BROKER_URL", "amqp://localhost"),
        ("FARM_ARTIFACTS_URL", "ftp://host/x"),
        ("FARM_PUBLIC_READ", "maybe"),
        ("FARM_LOG_LEVEL", "LOUD"),
        ("FARM_TASK_TIME_LIMIT", "100"),  # below the soft limit
    ],
)
def test_malformed_value_is_named(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_visibility_timeout_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(SettingsError, match="FARM_BROKER_VISIBILITY_TIMEOUT"):
        load_settings({"FARM_TASK_TIME_LIMIT": "4000", "FARM_BROKER_VISIBILITY_TIMEOUT": "3900"})


def test_client_variables_are_known() -> None:
    assert {"FARM_SERVER", "FARM_TOKEN", "FARM_PROFILE"} <= set(known_variables())


def test_the_compilers_own_variables_do_not_stop_the_farm() -> None:
    """The CPU backend reads FARM_NUMBA_THREADING_LAYER and FARM_PRELOAD_CYTHON_BLAS itself; a
    worker started with one set must not fail on it as an unknown setting."""
    settings = load_settings({"FARM_NUMBA_THREADING_LAYER": "omp", "FARM_PRELOAD_CYTHON_BLAS": "0"})
    assert settings.log_level == load_settings({}).log_level


def test_sqlite_path() -> None:
    assert str(sqlite_path("sqlite:///./farm-data/farm.db")) == "farm-data/farm.db"
    assert str(sqlite_path("sqla+sqlite:////abs/broker.db")) == "/abs/broker.db"
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://x/y") is None
