"""A schema-driven fuzzer (schemathesis) against our own OpenAPI document, through WSGI.

Every operation gets generated requests (valid and invalid bodies, queries, path ids, uploads)
with an admin token; no answer may be a 500, and every answer must match the spec: a documented
status, the documented content type, and a body valid against the response schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from farm.api.auth import issue_token
from farm.config import load_settings
from farm.db.migrate import upgrade

MAX_EXAMPLES = 20  # per operation, valid and invalid requests mixed; keeps this test under a minute
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def fuzz_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, small_cnn
) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    """A farm with one model, one submission and a finished job (so lookups sometimes hit), on each database."""
    from api_support import client_with, finished_build_job, upload_model

    from farm.app import create_app

    folder: Path = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'farm.db'}"
    else:
        import psycopg

        admin_url: str = request.getfixturevalue("postgres_url")
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute("DROP SCHEMA public CASCADE")
            connection.execute("CREATE SCHEMA public")
        url = "postgresql+psycopg://" + admin_url.split("://", 1)[1]
    upgrade(url)
    app = create_app(load_settings({}, database_url=url, broker_url="memory://",
                                   artifacts_url=str(folder / "artifacts"), max_upload_mb=1))  # fmt: skip
    app.config["TESTING"] = False  # errors must be answered as the production app answers them
    client = client_with(app, "submit")
    version = upload_model(client, small_cnn.data, name="cnn").json["model_version"]
    finished_build_job(app, version["id"], b"fuzz engine bytes")
    client.post("/api/v1/submissions", json={"model": "cnn", "profiles": ["cpu"]})
    app.config["FUZZ_TOKEN"] = issue_token(app.extensions["farm"].db, "fuzzer", ["admin"])
    yield app
    app.extensions["farm"].db.dispose()


def test_api_answers_every_generated_request_within_its_spec(fuzz_app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fuzz_app)
    headers = {"Authorization": f"Bearer {fuzz_app.config['FUZZ_TOKEN']}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: dict[str, str] = {}
    tested = 0
    for operation in operations:
        if operation.path.startswith("/tokens/"):
            continue  # revoking tokens would revoke the fuzzer's own token half-way through

        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)  # fmt: skip
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report them together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
        tested += 1
    assert tested >= 20
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())
