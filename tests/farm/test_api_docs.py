"""The OpenAPI document is valid and complete, and docs/API.md carries its current reference."""

from __future__ import annotations

from flask import Flask
from openapi_spec_validator import validate

from farm.api.docs import API_DOC, api_spec, updated_document


def test_spec_is_valid_openapi_and_covers_every_route(app: Flask) -> None:
    spec = app.test_client().get("/api/v1/openapi.json").json
    validate(spec)
    assert spec["servers"][0]["url"].endswith("/api/v1")
    documented = {(path, method.upper()) for path, methods in spec["paths"].items() for method in methods}
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule == "/api/v1/openapi.json":
            continue
        path = rule.rule.removeprefix("/api/v1")
        for converter in ("<int:", "<"):
            path = path.replace(converter, "{")
        path = path.replace(">", "}")
        served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}  # type: ignore[operator]
    assert served == documented
    submissions = spec["paths"]["/submissions"]["post"]
    assert submissions["security"] == [{"bearer": ["submit"]}]
    assert {p["name"] for p in submissions["parameters"]} == {"Idempotency-Key"}
    assert {"400", "401", "403", "404", "409", "415"} <= set(submissions["responses"])
    body = spec["components"]["schemas"]["SubmissionIn"]
    assert body["properties"]["precisions"]["items"]["enum"] == ["fp32", "fp16", "bf16", "int8", "best"]


def test_docs_api_md_matches_the_spec() -> None:
    text = API_DOC.read_text()
    assert text == updated_document(text, api_spec()), "docs/API.md is stale: run `python -m farm.api.docs`"
