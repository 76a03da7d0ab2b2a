"""Fixtures shared by every test area.

Services: tests marked ``services`` use a real PostgreSQL and Redis. Each test session gets its own
PostgreSQL database (``farm_test_<random>``, dropped at the end) and its own Redis database number
and key prefix, so parallel runs on one machine do not collide. When a service is missing, the test
is skipped with the reason, except under ``CI=true``, where a missing service is a failure.

The addresses default to the local servers ``make test`` starts; override them with
``TEST_POSTGRES_URL`` (an admin connection, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``)
and ``TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379``).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path, where tests/farm/ would pass for a namespace package "farm";
# the repository root must come first so `import farm` is always the real package
REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path[:1] != [REPO_ROOT]:
    sys.path.insert(0, REPO_ROOT)

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_TEST_DBS = range(1, 16)  # db 0 is left to humans


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where missing services are failures."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_unavailable(what: str, error: BaseException) -> None:
    """Skip (locally) or fail (under CI) a test that needs an unreachable service."""
    message = f"{what} is not reachable ({type(error).__name__}: {error}); `make test` starts it"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


_service_errors: dict[str, str | None] = {}


def _probe_services() -> dict[str, str | None]:
    """Connect once per session to PostgreSQL and Redis; the error of each, or ``None`` when it answers."""
    if not _service_errors:
        try:
            import psycopg

            psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5).close()
            _service_errors["PostgreSQL"] = None
        except Exception as exc:
            _service_errors["PostgreSQL"] = f"{POSTGRES_ADMIN_URL}: {type(exc).__name__}: {exc}"
        try:
            import redis

            redis.Redis.from_url(REDIS_BASE_URL, socket_connect_timeout=5).ping()
            _service_errors["Redis"] = None
        except Exception as exc:
            _service_errors["Redis"] = f"{REDIS_BASE_URL}: {type(exc).__name__}: {exc}"
    return _service_errors


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``services`` needs PostgreSQL and Redis: skipped without them, failed under CI."""
    if item.get_closest_marker("services") is None:
        return
    missing = {name: error for name, error in _probe_services().items() if error}
    if missing:
        message = "; ".join(f"{name} is not reachable ({error})" for name, error in missing.items())
        if in_ci():
            pytest.fail(f"CI=true: {message}; `make test` starts them", pytrace=False)
        pytest.skip(f"{message}; `make test` starts them")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL (``postgresql://…``) of a fresh, empty database for this test session."""
    import psycopg

    name = f"farm_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:
        service_unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database with its ``public`` schema emptied for this test."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    return postgres_url


@dataclass(frozen=True)
class RedisTarget:
    """A Redis database and key prefix that belong to this test session alone."""

    url: str
    key_prefix: str


@pytest.fixture(scope="session")
def redis_target() -> Iterator[RedisTarget]:
    """A Redis URL with a database number and a key prefix for this test session."""
    import redis

    base = REDIS_BASE_URL.rstrip("/")
    try:
        redis.Redis.from_url(base, socket_connect_timeout=5).ping()
    except Exception as exc:
        service_unavailable(f"Redis at {base}", exc)
    db_number = REDIS_TEST_DBS[secrets.randbelow(len(REDIS_TEST_DBS))]
    target = RedisTarget(url=f"{base}/{db_number}", key_prefix=f"farm-test-{secrets.token_hex(6)}:")
    try:
        yield target
    finally:
        client = redis.Redis.from_url(target.url)
        keys = list(client.scan_iter(match=f"{target.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)


@dataclass(frozen=True)
class SmallCnn:
    """A small real ONNX model and the facts its construction implies."""

    data: bytes
    batch_symbol: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    parameter_count: int
    conv_macs: int
    gemm_macs: int
    matmul_macs: int
    op_histogram: dict[str, int]


@pytest.fixture(scope="session")
def small_cnn() -> SmallCnn:
    """Conv(3→8, 3×3, pad 1) → Relu → GlobalAveragePool → Flatten → Gemm(8→10) → MatMul(10→4).

    Random weights; a symbolic batch dimension; opset 17.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    c_in, c_out, kernel, size, hidden, classes = 3, 8, 3, 16, 10, 4
    weights = {
        "conv_w": rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32),
        "conv_b": rng.standard_normal(c_out).astype(np.float32),
        "fc_w": rng.standard_normal((hidden, c_out)).astype(np.float32),  # used with transB=1
        "fc_b": rng.standard_normal(hidden).astype(np.float32),
        "head_w": rng.standard_normal((hidden, classes)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc"], transB=1, name="fc"),
        helper.make_node("MatMul", ["fc", "head_w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", c_in, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="farm-tests")
    onnx.checker.check_model(model, full_check=True)
    return SmallCnn(
        data=model.SerializeToString(),
        batch_symbol="batch",
        input_shape=["batch", c_in, size, size],
        output_shape=["batch", classes],
        parameter_count=sum(int(array.size) for array in weights.values()),
        # per output element: C_in × k × k multiply-accumulates; batch counts as 1
        conv_macs=c_out * size * size * c_in * kernel * kernel,
        gemm_macs=hidden * c_out,
        matmul_macs=classes * hidden,
        op_histogram={"Conv": 1, "Relu": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1, "MatMul": 1},
    )
