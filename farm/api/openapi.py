"""One registry ties every API route to its pydantic models; it validates requests and writes the spec.

A view is declared once::

    @api.operation("GET", "/jobs/<int:job_id>", summary="One job", response=JobOut, tag="jobs")
    def get_job(job_id: int) -> JobOut: ...

    @api.operation("POST", "/submissions", body=SubmissionIn, response=SubmissionOut, status=201,
                   scope="submit", errors=(404, 409), headers=[IDEMPOTENCY_KEY])
    def create_submission(body: SubmissionIn) -> tuple[SubmissionOut, int]: ...

The wrapper checks the caller's token against ``scope``, validates the query string, JSON body or
form against the declared models (a failure is a 400 that names the field), calls the view with
the parsed models, and serialises its return value THROUGH the declared response model, so what
the API answers is what the spec says. :meth:`ApiRegistry.spec` builds the OpenAPI 3.1 document from
the same declarations; nothing is written twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from farm.api.errors import ERROR_CODES, ApiError

MAX_ID = 2**31 - 1  # ids are 32-bit integers in PostgreSQL
REF_TEMPLATE = "#/components/schemas/{model}"
COMMON_ERRORS = (400, 401, 403, 404, 503)
_RULE_PARAM = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>[a-zA-Z_]+)>")


@dataclass(frozen=True)
class HeaderParam:
    """A request header an operation reads (documented in the spec)."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class BinaryResponse:
    """A non-JSON response body (e.g. an engine file)."""

    media_type: str
    description: str
    headers: Mapping[str, str] = field(default_factory=dict)  # header name -> description


@dataclass
class Operation:
    """One method on one route, with everything the wrapper and the spec need."""

    method: str
    rule: str
    endpoint: str
    summary: str
    description: str
    tag: str
    scope: str
    query: type[BaseModel] | None
    body: type[BaseModel] | None
    form: type[BaseModel] | None
    files: Mapping[str, str]
    response: type[BaseModel] | BinaryResponse | None
    status: int
    extra_responses: Mapping[int, type[BaseModel] | BinaryResponse | str]
    errors: tuple[int, ...]
    headers: Sequence[HeaderParam]

    @property
    def openapi_path(self) -> str:
        return _RULE_PARAM.sub(lambda m: "{" + m.group("name") + "}", self.rule)

    def path_params(self) -> list[tuple[str, str]]:
        return [(m.group("name"), m.group("converter") or "string") for m in _RULE_PARAM.finditer(self.rule)]


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str
    message: str
    details: dict[str, Any]


class ApiRegistry:
    """The API's operations on one blueprint; see the module docstring."""

    def __init__(self, blueprint: Blueprint, *, title: str, version: str, description: str) -> None:
        self.blueprint = blueprint
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []
        self.authorize: Callable[[str], Any] = lambda scope: None

    def operation(
        self,
        method: str,
        rule: str,
        *,
        summary: str,
        tag: str,
        scope: str | None = None,
        query: type[BaseModel] | None = None,
        body: type[BaseModel] | None = None,
        form: type[BaseModel] | None = None,
        files: Mapping[str, str] | None = None,
        response: type[BaseModel] | BinaryResponse | None = None,
        status: int = 200,
        extra_responses: Mapping[int, type[BaseModel] | BinaryResponse | str] | None = None,
        errors: Sequence[int] = (),
        headers: Sequence[HeaderParam] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register ``view`` for ``method rule``; see the module docstring."""

        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            op = Operation(
                method=method.upper(),
                rule=rule,
                endpoint=view.__name__,
                summary=summary,
                description=(view.__doc__ or summary).strip(),
                tag=tag,
                scope=scope or ("read" if method.upper() in ("GET", "HEAD") else "submit"),
                query=query,
                body=body,
                form=form,
                files=dict(files or {}),
                response=response,
                status=status,
                extra_responses=dict(extra_responses or {}),
                errors=tuple(
                    sorted(
                        set(COMMON_ERRORS)
                        | set(errors)
                        | ({415} if body else set())
                        | ({413} if files else set())
                    )
                ),
                headers=tuple(headers),
            )

            @wraps(view)
            def wrapper(**path_args: Any) -> Any:
                for name, value in path_args.items():
                    if isinstance(value, int) and not 1 <= value <= MAX_ID:
                        raise ApiError(404, f"no such {name.removesuffix('_id')} {value}")
                    if isinstance(value, str):
                        _refuse_nul(value, name)
                self.authorize(op.scope)
                kwargs = dict(path_args)
                if op.query is not None:
                    kwargs["query"] = parse_model(op.query, request.args.to_dict(), "query")
                if op.body is not None:
                    kwargs["body"] = parse_model(op.body, _json_body(), "body")
                if op.form is not None:
                    kwargs["form"] = parse_model(op.form, request.form.to_dict(), "form")
                for name in op.files:
                    if name not in request.files:
                        raise ApiError(400, f"missing the multipart file field {name!r}", field=name)
                return self._respond(op, view(**kwargs))

            self.blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=wrapper, methods=[op.method])
            self.operations.append(op)
            return wrapper

        return decorator

    def _respond(self, op: Operation, result: Any) -> Any:
        if isinstance(result, Response):
            return result
        status = op.status
        if isinstance(result, tuple):
            result, status = result
        model = op.response if status == op.status else op.extra_responses.get(status)
        if isinstance(model, type) and issubclass(model, BaseModel):
            if not isinstance(result, model):
                result = model.model_validate(result)
            return jsonify(result.model_dump(mode="json")), status
        return jsonify(result), status

    # the spec

    def spec(self, server_url: str = "/api/v1") -> dict[str, Any]:
        """The OpenAPI 3.1 document of every registered operation."""
        models: dict[tuple[type[BaseModel], str], None] = {(ErrorBody, "serialization"): None}
        for op in self.operations:
            for request_model in (op.query, op.body, op.form):
                if request_model is not None:
                    models[(request_model, "validation")] = None
            for response_model in (op.response, *op.extra_responses.values()):
                if isinstance(response_model, type):
                    models[(response_model, "serialization")] = None
        refs, definitions = models_json_schema(list(models), ref_template=REF_TEMPLATE)  # type: ignore[arg-type]
        components = definitions.get("$defs", {})

        def schema_of(model: type[BaseModel], mode: str) -> dict[str, Any]:
            return dict(refs[(model, mode)])  # type: ignore[index]

        def inline(model: type[BaseModel], mode: str) -> dict[str, Any]:
            ref = schema_of(model, mode)["$ref"].rsplit("/", 1)[-1]
            return dict(components[ref])

        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            parameters: list[dict[str, Any]] = []
            for name, converter in op.path_params():
                schema: dict[str, Any] = (
                    {"type": "integer", "minimum": 1, "maximum": MAX_ID}
                    if converter == "int"
                    else {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^/\\x00]+$"}
                )
                parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
            if op.query is not None:
                query_schema = inline(op.query, "validation")
                required = set(query_schema.get("required", []))
                for name, prop in query_schema.get("properties", {}).items():
                    parameters.append(
                        {
                            "name": name,
                            "in": "query",
                            "required": name in required,
                            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
                            **({"description": prop["description"]} if "description" in prop else {}),
                        }
                    )
            for header in op.headers:
                parameters.append(
                    {"name": header.name, "in": "header", "required": False, "schema": header.schema,
                     "description": header.description}
                )  # fmt: skip
            operation: dict[str, Any] = {
                "operationId": op.endpoint,
                "summary": op.summary,
                "description": op.description,
                "tags": [op.tag],
                "parameters": parameters,
                "responses": self._responses(op, schema_of),
            }
            if op.scope == "read":
                operation["security"] = [{}, {"bearer": ["read"]}]
            else:
                operation["security"] = [{"bearer": [op.scope]}]
            if op.body is not None:
                operation["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": schema_of(op.body, "validation")}},
                }
            elif op.form is not None or op.files:
                form_schema: dict[str, Any] = (
                    inline(op.form, "validation") if op.form else {"type": "object", "properties": {}}
                )
                properties = dict(form_schema.get("properties", {}))
                for name, description in op.files.items():
                    properties[name] = {"type": "string", "format": "binary", "description": description}
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": properties,
                                "required": sorted(set(form_schema.get("required", [])) | set(op.files)),
                            }
                        }
                    },
                }
            paths.setdefault(op.openapi_path, {})[op.method.lower()] = operation
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "servers": [{"url": server_url}],
            "paths": paths,
            "components": {
                "schemas": components,
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "description": "A token from `farm token create NAME --scope read|submit|admin`.",
                    }
                },
            },
        }

    def _responses(
        self, op: Operation, schema_of: Callable[[type[BaseModel], str], dict[str, Any]]
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {}
        for status, model in ((op.status, op.response), *op.extra_responses.items()):
            responses[str(status)] = _response_entry(status, model, schema_of)
        error_ref = schema_of(ErrorBody, "serialization")
        for status in op.errors:
            responses.setdefault(
                str(status),
                {
                    "description": ERROR_CODES.get(status, "error").replace("_", " "),
                    "content": {"application/json": {"schema": error_ref}},
                },
            )
        return responses


def _response_entry(
    status: int,
    model: type[BaseModel] | BinaryResponse | str | None,
    schema_of: Callable[[type[BaseModel], str], dict[str, Any]],
) -> dict[str, Any]:
    if model is None or isinstance(model, str):
        return {"description": model or "no content"}
    if isinstance(model, BinaryResponse):
        entry: dict[str, Any] = {
            "description": model.description,
            "content": {model.media_type: {"schema": {"type": "string", "format": "binary"}}},
        }
        if model.headers:
            entry["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in model.headers.items()
            }
        return entry
    return {
        "description": (model.__doc__ or model.__name__).strip().splitlines()[0],
        "content": {"application/json": {"schema": schema_of(model, "serialization")}},
    }


def parse_model(model: type[BaseModel], data: Any, where: str) -> Any:
    """``data`` validated by ``model``; ApiError(400) naming the first bad field otherwise."""
    _refuse_nul(data, where)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        location = ".".join(str(part) for part in first["loc"]) or where
        problems = [
            {"field": ".".join(str(part) for part in error["loc"]) or where, "message": error["msg"]}
            for error in errors[:20]
        ]
        raise ApiError(
            400, f"invalid {where} field {location!r}: {first['msg']}", field=location, problems=problems
        ) from None


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "the request body must be JSON (Content-Type: application/json)", field="body")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # get_json(silent=True) only swallows ValueError
        raise ApiError(400, "the request body is not valid JSON: it nests too deeply", field="body") from None
    if body is None:
        raise ApiError(400, "the request body is not valid JSON", field="body")
    return body


def _refuse_nul(value: Any, where: str) -> None:
    # PostgreSQL cannot store NUL characters: refuse them as a 400 instead of a database error
    if isinstance(value, str):
        if "\x00" in value:
            raise ApiError(400, f"{where} contains a NUL character", field=where)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_nul(key, where)
            _refuse_nul(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for item in value:
            _refuse_nul(item, where)
