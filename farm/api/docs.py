"""The generated reference of docs/API.md, written from the same OpenAPI document the API serves.

``python -m farm.api.docs`` rewrites the part of docs/API.md between the two markers; a test fails
when that part differs from what the current schemas generate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN GENERATED REFERENCE (python -m farm.api.docs) -->"
END = "<!-- END GENERATED REFERENCE -->"
API_DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def api_spec() -> dict[str, Any]:
    """The OpenAPI document of every registered route."""
    from farm.api.views import api

    return api.spec()


def type_of(schema: dict[str, Any]) -> str:
    """A short human-readable type of a JSON schema."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " \\| ".join(type_of(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{value}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_of(schema.get('items', {}))}"
    if (
        kind == "object"
        and "additionalProperties" in schema
        and isinstance(schema["additionalProperties"], dict)
    ):
        return f"map of {type_of(schema['additionalProperties'])}"
    if kind == "string" and schema.get("format") == "binary":
        return "file"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    parts = []
    for key, text in (("minimum", "≥ {}"), ("maximum", "≤ {}"), ("minLength", "≥ {} chars"),
                      ("maxLength", "≤ {} chars"), ("minItems", "≥ {} items"), ("maxItems", "≤ {} items")):  # fmt: skip
        if key in schema:
            parts.append(text.format(schema[key]))
    if "default" in schema and schema["default"] is not None:
        parts.append(f"default `{schema['default']}`")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_reference(spec: dict[str, Any]) -> str:
    """The Markdown reference: every operation, then every schema."""
    lines = ["## Reference", "", f"Generated from `/api/v1/openapi.json` (OpenAPI {spec['openapi']}).", ""]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            scopes = [scope for entry in op["security"] for scope in entry.get("bearer", [])]
            public = any(entry == {} for entry in op["security"])
            access = f"scope `{scopes[0]}`" + (
                " (none needed while FARM_PUBLIC_READ is on)" if public else ""
            )
            lines += [f"### {method.upper()} {path}", "", f"**{op['summary']}** — {access}.", ""]
            lines += [op["description"], ""]
            if op["parameters"]:
                lines += ["| parameter | in | type | required | notes |", "|---|---|---|---|---|"]
                for param in op["parameters"]:
                    notes = _cell(
                        " ".join(filter(None, [param.get("description", ""), _limits(param["schema"])]))
                    )
                    lines.append(f"| `{param['name']}` | {param['in']} | {type_of(param['schema'])} | "
                                 f"{'yes' if param['required'] else 'no'} | {notes} |")  # fmt: skip
                lines.append("")
            if "requestBody" in op:
                for media, content in op["requestBody"]["content"].items():
                    lines.append(f"Request body ({media}): {type_of(content['schema'])}")
                    if "properties" in content["schema"]:
                        required = set(content["schema"].get("required", []))
                        lines += ["", "| field | type | required | notes |", "|---|---|---|---|"]
                        for name, prop in content["schema"]["properties"].items():
                            notes = _cell(
                                " ".join(filter(None, [prop.get("description", ""), _limits(prop)]))
                            )
                            lines.append(
                                f"| `{name}` | {type_of(prop)} | {'yes' if name in required else 'no'} | {notes} |"
                            )
                    lines.append("")
            responses = []
            for status, response in op["responses"].items():
                content = response.get("content", {})
                kinds = ", ".join(f"{type_of(c['schema'])} ({m})" for m, c in content.items()) or "no body"
                responses.append(f"`{status}` {kinds}")
            lines += ["Responses: " + "; ".join(responses) + ".", ""]
    lines += ["## Schemas", ""]
    for name, schema in spec["components"]["schemas"].items():
        lines += [f"### {name}", "", _cell(schema.get("description", "")), ""]
        properties = schema.get("properties", {})
        if properties:
            required = set(schema.get("required", []))
            lines += ["| field | type | required | notes |", "|---|---|---|---|"]
            for field, prop in properties.items():
                notes = _cell(" ".join(filter(None, [prop.get("description", ""), _limits(prop)])))
                lines.append(
                    f"| `{field}` | {type_of(prop)} | {'yes' if field in required else 'no'} | {notes} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def updated_document(text: str, spec: dict[str, Any]) -> str:
    """``text`` (docs/API.md) with its generated part replaced by the reference of ``spec``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"docs/API.md must contain the markers {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n\n{render_reference(spec)}\n{END}{tail}"


def main() -> None:
    """Rewrite the generated part of docs/API.md."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else API_DOC
    path.write_text(updated_document(path.read_text(), api_spec()))
    print(f"updated {path}")


if __name__ == "__main__":
    main()
