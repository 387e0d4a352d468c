"""MkDocs hook: the HTTP API reference, generated from the FastAPI apps' OpenAPI documents.

A page that contains ``<!-- openapi-reference -->`` gets, in its place, the order API's OpenAPI
document rendered as Markdown (every operation with its parameters, body and responses, every
schema with its fields) followed by the document itself as JSON, and the operator console's
routes. The documents come from ``create_app(...).openapi()`` at build time: no server, no
network, and the apps are built from their settings' defaults (not from the environment of the
machine that builds the site), so the page states the defaults a deployment starts from.
"""

from __future__ import annotations

import json
from typing import Any, Final

from services.console.app import create_app as create_console
from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings
from services.order.app import create_app as create_order_api
from services.order.settings import OrderSettings

PLACEHOLDER: Final = "<!-- openapi-reference -->"
_HTTP_METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options")
_CONSTRAINTS: Final = (
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minimum", "≥ {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMinimum", "> {}"),
    ("exclusiveMaximum", "< {}"),
    ("minItems", "≥ {} items"),
    ("maxItems", "≤ {} items"),
)

Schema = dict[str, Any]


def order_api_document() -> Schema:
    """The order API's OpenAPI document for the default settings (environment ignored)."""
    # model_validate, not OrderSettings(): a BaseSettings built this way reads no environment.
    document: Schema = create_order_api(OrderSettings.model_validate({})).openapi()
    return document


def console_document() -> Schema:
    # The console refuses to start without a token; the document does not depend on its value.
    settings = ConsoleSettings.model_validate({"token": "d" * MIN_TOKEN_CHARS})
    document: Schema = create_console(settings).openapi()
    return document


def _anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def type_of(schema: Schema) -> str:
    """A schema's type in a few words, with a link to a named schema."""
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in schema:
        kinds = [type_of(option) for option in schema["anyOf"] if option.get("type") != "null"]
        nullable = any(option.get("type") == "null" for option in schema["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if "format" in schema:
        kind += f" ({schema['format']})"
    return kind


def constraints_of(schema: Schema) -> str:
    found = [text.format(schema[key]) for key, text in _CONSTRAINTS if key in schema]
    for option in schema.get("anyOf", []):
        found += [text.format(option[key]) for key, text in _CONSTRAINTS if key in option]
    if "pattern" in schema or any("pattern" in option for option in schema.get("anyOf", [])):
        found.append("a pattern (in the JSON below)")
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'])}`")
    return ", ".join(found)


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _operation(method: str, path: str, operation: Schema) -> list[str]:
    lines = [f"### `{method.upper()} {path}`\n", _cell(operation.get("summary", "")) + "\n"]
    if operation.get("description"):
        lines.append(str(operation["description"]).strip() + "\n")
    parameters = operation.get("parameters", [])
    if parameters:
        lines.append("| parameter | in | required | type | description |")
        lines.append("| --- | --- | --- | --- | --- |")
        for parameter in parameters:
            schema = parameter.get("schema", {})
            lines.append(
                f"| `{parameter['name']}` | {parameter['in']} | "
                f"{'yes' if parameter.get('required') else 'no'} | {type_of(schema)} | "
                f"{_cell(parameter.get('description', schema.get('description', '')))} |"
            )
        lines.append("")
    body = operation.get("requestBody")
    if body:
        for content_type, content in body.get("content", {}).items():
            lines.append(f"Body (`{content_type}`): {type_of(content.get('schema', {}))}\n")
    lines.append("| status | meaning | body |")
    lines.append("| --- | --- | --- |")
    for status, response in operation.get("responses", {}).items():
        bodies = [
            f"{type_of(content['schema'])} (`{content_type}`)" if "schema" in content else ""
            for content_type, content in response.get("content", {}).items()
        ]
        lines.append(
            f"| {status} | {_cell(response.get('description', ''))} | {', '.join(bodies)} |"
        )
    lines.append("")
    return lines


def _schema(name: str, schema: Schema) -> list[str]:
    lines = [f"### `{name}` {{ #{_anchor(name)} }}\n"]
    if schema.get("description"):
        lines.append(_cell(schema["description"]) + "\n")
    properties: dict[str, Schema] = schema.get("properties", {})
    if not properties:
        lines.append(f"Type: {type_of(schema)}.\n")
        return lines
    required = set(schema.get("required", []))
    lines.append("| field | type | required | constraints | description |")
    lines.append("| --- | --- | --- | --- | --- |")
    for field, field_schema in properties.items():
        lines.append(
            f"| `{field}` | {type_of(field_schema)} | {'yes' if field in required else 'no'} | "
            f"{_cell(constraints_of(field_schema))} | "
            f"{_cell(field_schema.get('description', ''))} |"
        )
    if schema.get("additionalProperties") is False:
        lines.append("\nAny other field is refused.")
    lines.append("")
    return lines


def render_order_api(document: Schema) -> str:
    info = document.get("info", {})
    lines = [
        f"## {info.get('title', 'API')} {info.get('version', '')}\n",
        _cell(info.get("summary", "")) + "\n",
        str(info.get("description", "")).strip() + "\n",
        "## Operations\n",
    ]
    for path, operations in document.get("paths", {}).items():
        for method in _HTTP_METHODS:
            if method in operations:
                lines += _operation(method, path, operations[method])
    lines.append("## Schemas\n")
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += _schema(name, schema)
    dumped = json.dumps(document, indent=2)
    indented = "\n".join("    " + line for line in dumped.splitlines())
    title = "The OpenAPI document (`/openapi.json`)"
    lines.append(f'??? note "{title}"\n\n    ```json\n{indented}\n    ```\n')
    return "\n".join(lines)


def render_console(document: Schema) -> str:
    lines = [
        "## Operator console routes\n",
        "The console serves HTML pages and their JSON twins under `/api/` (see "
        "[the console](../operating/console.md) for what each shows and how to sign in); "
        "every route but `/login`, `/healthz` and `/readyz` needs the token.\n",
        "| method | path | handler |",
        "| --- | --- | --- |",
    ]
    for path, operations in document.get("paths", {}).items():
        for method in _HTTP_METHODS:
            if method in operations:
                summary = _cell(operations[method].get("summary", ""))
                lines.append(f"| {method.upper()} | `{path}` | {summary} |")
    lines.append("")
    return "\n".join(lines)


def render() -> str:
    return render_order_api(order_api_document()) + "\n" + render_console(console_document())


def on_page_markdown(markdown: str, **_: object) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, render())
