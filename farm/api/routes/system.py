"""Health, the OpenAPI document, hardware profiles and workers."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from farm.api.health import check_health, seen_workers
from farm.api.registry import api, api_blueprint
from farm.api.schemas import HealthOut, ProfileList, WorkerList
from farm.app import current_services
from farm.profiles import all_profiles


@api_blueprint.get("/openapi.json")
def openapi_document() -> Any:
    """The OpenAPI 3.1 document of this API, generated from the schemas that validate its requests."""
    return jsonify(api.spec(server_url=request.url_root.rstrip("/") + "/api/v1"))


@api.operation("GET", "/health", summary="Health of the farm's parts", tag="system", response=HealthOut,
               extra_responses={503: HealthOut}, scope="read")  # fmt: skip
def health() -> Any:
    """Database, broker, artifact store and workers; 503 when a required part is down."""
    report = check_health(current_services())
    return report, 200 if report["ok"] else 503


@api.operation("GET", "/profiles", summary="Hardware profiles", tag="system", response=ProfileList)
def list_profiles() -> Any:
    """Every hardware profile, with whether a live worker serves it."""
    served = {p for worker in seen_workers(current_services()) if worker["alive"] for p in worker["profiles"]}
    return {"items": [p.to_dict() | {"served": p.name in served} for p in all_profiles().values()]}


@api.operation("GET", "/workers", summary="Workers", tag="system", response=WorkerList)
def list_workers() -> Any:
    """Every worker seen, with its profiles, last heartbeat and host fingerprint."""
    return {"items": seen_workers(current_services())}
