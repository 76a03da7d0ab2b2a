"""Settings: one object, read once from ``FARM_*`` environment variables.

The defaults are the embedded deployment (``farm up`` with nothing installed): SQLite for the
database, a SQLite-backed Celery broker (kombu's SQLAlchemy transport) and artifacts in a local
folder, all under ``./farm-data/``. The service deployment sets ``FARM_DATABASE_URL`` and
``FARM_BROKER_URL``.

An unknown ``FARM_*`` variable or a malformed value is an error at start that names the variable,
so a typo such as ``FARM_DATABSE_URL`` cannot silently fall back to the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FARM_"

DATABASE_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
BROKER_SCHEMES = ("sqla+sqlite", "sqla+postgresql", "sqla+postgresql+psycopg", "redis", "rediss", "memory")
ARTIFACT_SCHEMES = ("file", "s3")


class SettingsError(ValueError):
    """A ``FARM_*`` variable is unknown or its value is malformed; the message names the variable."""


class Settings(BaseSettings):
    """Every setting of the farm; each field ``x`` is read from the variable ``FARM_X``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # where state lives
    database_url: str = Field(
        "sqlite:///./farm-data/farm.db",
        description="SQLAlchemy URL of the database: sqlite:///PATH or postgresql://USER@HOST/DB.",
    )
    broker_url: str = Field(
        "sqla+sqlite:///./farm-data/broker.db",
        description="Celery broker: redis://HOST:6379/0, or sqla+sqlite:///PATH for the embedded farm.",
    )
    broker_key_prefix: str = Field(
        "", description="Prefix for every broker key in Redis, so several farms can share one Redis."
    )
    broker_polling_interval: float = Field(
        0.1, gt=0, description="Seconds between polls of a SQL-backed broker (ignored for Redis)."
    )
    artifacts_url: str = Field(
        "./farm-data/artifacts",
        description="Artifact store: a folder, file:///PATH, or s3://BUCKET/PREFIX.",
    )

    # the API server
    host: str = Field("127.0.0.1", description="Address the API server listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port the API server listens on.")
    api_workers: int = Field(2, ge=1, le=64, description="gunicorn worker processes of `farm api`.")
    public_read: bool = Field(
        True, description="Let clients without a token read results and download engines."
    )
    max_upload_mb: int = Field(1024, ge=1, description="Largest accepted upload (model, dataset), in MiB.")
    secret_key: str = Field("", description="Flask secret key; a random one per process when empty.")

    # workers
    profile: str = Field(
        "", description="Comma-separated profiles a worker serves; empty: detect this host's profile."
    )
    worker_concurrency: int = Field(1, ge=1, le=64, description="Jobs one worker runs at a time.")
    heartbeat_seconds: float = Field(10.0, gt=0, description="Seconds between a worker's heartbeats.")
    lease_seconds: int = Field(
        600, ge=10, description="A running job whose lease is this old is taken over by another worker."
    )
    task_soft_time_limit: int = Field(3300, ge=1, description="Seconds before a job is asked to stop.")
    task_time_limit: int = Field(3600, ge=1, description="Seconds before a job's process is killed.")
    broker_visibility_timeout: int = Field(
        7200, ge=60, description="Seconds before Redis redelivers an unacknowledged job message."
    )
    max_attempts: int = Field(3, ge=1, le=20, description="Deliveries of one job before it is failed.")
    reconcile_seconds: float = Field(
        30.0, gt=0, description="Seconds between a worker's passes of the job reconciler (lost messages)."
    )
    requeue_after_seconds: int = Field(
        120,
        ge=1,
        description="A queued job whose queue is empty, or a running job whose lease expired, is re-sent "
        "to the broker after this many seconds without a message.",
    )
    worker_warmup: bool = Field(
        False,
        description="Build the zoo models once before serving jobs, so the first job does not wait while "
        "numba compiles the kernels (`farm warmup`).",
    )
    worker_seen_seconds: int = Field(
        60, ge=1, description="A profile counts as served while one of its workers heartbeat this recently."
    )

    # client side (farm submit / results / download)
    server: str = Field("http://127.0.0.1:8080", description="URL of the farm, for the client commands.")
    token: str = Field("", description="Bearer token the client commands send.")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        _require_scheme(value, DATABASE_SCHEMES)
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        _require_scheme(value, BROKER_SCHEMES)
        return value

    @field_validator("artifacts_url")
    @classmethod
    def _check_artifacts_url(cls, value: str) -> str:
        if "://" in value:
            _require_scheme(value, ARTIFACT_SCHEMES)
        elif not value.strip():
            raise ValueError("must be a folder, file:///PATH or s3://BUCKET/PREFIX")
        return value

    @field_validator("task_time_limit")
    @classmethod
    def _check_time_limits(cls, value: int, info: Any) -> int:
        soft = info.data.get("task_soft_time_limit")
        if soft is not None and value <= soft:
            raise ValueError(f"must be greater than FARM_TASK_SOFT_TIME_LIMIT ({soft})")
        return value

    @field_validator("broker_visibility_timeout")
    @classmethod
    def _check_visibility(cls, value: int, info: Any) -> int:
        hard = info.data.get("task_time_limit")
        if hard is not None and value <= hard:
            raise ValueError(f"must be greater than FARM_TASK_TIME_LIMIT ({hard}), or jobs run twice")
        return value

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the driver SQLAlchemy needs (psycopg 3 for PostgreSQL)."""
        if self.database_url.startswith("postgresql://"):
            return "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        return self.database_url

    @property
    def celery_broker_url(self) -> str:
        """The broker URL with the driver kombu needs (psycopg 3 for a PostgreSQL-backed broker)."""
        if self.broker_url.startswith("sqla+postgresql://"):
            return "sqla+postgresql+psycopg://" + self.broker_url[len("sqla+postgresql://") :]
        return self.broker_url

    @property
    def profiles(self) -> list[str]:
        """The profiles named by ``FARM_PROFILE`` (empty: detect)."""
        return [name.strip() for name in self.profile.split(",") if name.strip()]

    def local_paths(self) -> list[Path]:
        """Folders the embedded deployment writes into (database, broker, artifacts)."""
        paths = []
        for url in (self.database_url, self.broker_url):
            path = sqlite_path(url)
            if path is not None:
                paths.append(path.parent)
        if "://" not in self.artifacts_url:
            paths.append(Path(self.artifacts_url))
        elif self.artifacts_url.startswith("file://"):
            paths.append(Path(self.artifacts_url[len("file://") :]))
        return paths

    def ensure_local_paths(self) -> None:
        """Create the local folders of the embedded deployment."""
        for path in self.local_paths():
            path.mkdir(parents=True, exist_ok=True)


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` (or ``sqla+sqlite:///PATH``) URL; ``None`` for other URLs."""
    for prefix in ("sqlite:///", "sqla+sqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            return None if rest in ("", ":memory:") else Path(rest)
    return None


def _require_scheme(url: str, allowed: tuple[str, ...]) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in allowed:
        raise ValueError(f"scheme {scheme or '(none)'!r} is not one of {', '.join(allowed)}")


# Variables the compiler reads itself, where it runs (``farm build`` or a worker): known here so
# that setting one does not stop the API or a worker as an unknown setting.
COMPILER_VARIABLES = (
    "FARM_NUMBA_THREADING_LAYER",  # farm.compiler.kernels.threads
    "FARM_PRELOAD_CYTHON_BLAS",  # farm.compiler.engine.numba_support
)


def known_variables() -> list[str]:
    """Every ``FARM_*`` variable the farm reads (the compiler's own included)."""
    return [ENV_PREFIX + name.upper() for name in Settings.model_fields] + list(COMPILER_VARIABLES)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings from ``environ`` (default ``os.environ``), with explicit ``overrides`` on top.

    Raises :class:`SettingsError` naming the variable for an unknown ``FARM_*`` variable or a
    malformed value.
    """
    env = os.environ if environ is None else environ
    known = set(known_variables())
    unknown = sorted(key for key in env if key.startswith(ENV_PREFIX) and key not in known)
    if unknown:
        raise SettingsError(
            f"unknown setting {', '.join(unknown)}; known settings are: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key in known and key not in COMPILER_VARIABLES
    }
    values.update(overrides)
    try:
        # pass values explicitly so `environ` (not os.environ) is the one source of truth
        return Settings.model_validate(values)
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            messages.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("invalid setting " + "; ".join(messages)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()
