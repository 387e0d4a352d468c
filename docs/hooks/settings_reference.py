"""MkDocs hook: the settings reference, generated from the pydantic-settings classes at build time.

A page that contains ``<!-- settings-reference -->`` gets, in its place, one table per settings
class in :data:`SETTINGS_CLASSES`: the environment variable, its type and bounds, its default and
what the field is for. "What it is for" is the field's ``description`` when it has one, else the
comment the code writes next to the field (above it, or at the end of its line), looked up
through the class's bases, so the page says what the code says and cannot drift from it.

A new settings class must be added to :data:`SETTINGS_CLASSES`; ``tests/unit/docs`` fails until
it is.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from importlib import import_module
from pathlib import Path
from typing import Any, Final, Literal

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from shared.settings import InfraSettings
from shared.settings import _variable as variable_of

__all__ = [
    "SETTINGS_CLASSES",
    "field_comment",
    "on_page_markdown",
    "render",
    "rows",
    "settings_class",
    "variable_of",
]

PLACEHOLDER: Final = "<!-- settings-reference -->"

# (heading, "module:Class"). The shared infrastructure comes first; each service's table lists
# only its own fields (the infrastructure variables apply to every service).
SETTINGS_CLASSES: Final = (
    ("Every service: the infrastructure", "shared.settings:InfraSettings"),
    ("Order API (`python -m services.order`)", "services.order.settings:OrderSettings"),
    (
        "Order verdict consumer (`python -m services.order.verdicts`)",
        "services.order.verdicts.settings:VerdictSettings",
    ),
    ("Relay (`python -m services.relay`)", "services.relay.settings:RelaySettings"),
    ("Inventory (`python -m services.inventory`)", "services.inventory.settings:InventorySettings"),
    ("Email (`python -m services.email`)", "services.email.settings:EmailSettings"),
    ("Console (`python -m services.console`)", "services.console.settings:ConsoleSettings"),
    ("DLQ CLI (`python -m shared.dlq`)", "shared.dlq.__main__:DlqSettings"),
)


def settings_class(path: str) -> type[BaseSettings]:
    module, _, name = path.partition(":")
    cls = getattr(import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
        raise TypeError(f"{path} is not a pydantic-settings class")
    return cls


def own_fields(cls: type[BaseSettings]) -> list[str]:
    """The fields a class's table lists: all of them for the infrastructure class, otherwise
    those the infrastructure class does not already have."""
    if cls is InfraSettings:
        return list(cls.model_fields)
    return [name for name in cls.model_fields if name not in InfraSettings.model_fields]


def _related(first: str, second: str) -> bool:
    """Two adjacent fields one comment may speak for: same first word or both URLs."""
    a, b = first.split("_"), second.split("_")
    return a[0] == b[0] or (a[-1].startswith("url") and b[-1].startswith("url"))


def _comments_in(cls: type) -> dict[str, str]:
    """Field name -> the comment the class body writes above the field or at its line's end."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    code_lines = source.splitlines()
    found: dict[str, str] = {}
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    fields = [
        node
        for node in body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]
    previous: tuple[int, str, str] | None = None  # (last line, name, comment) of the one before
    for node in fields:
        assert isinstance(node.target, ast.Name)
        above: list[str] = []
        line = node.lineno - 1
        while line >= 1 and code_lines[line - 1].strip().startswith("#"):
            above.insert(0, comments.get(line, ""))
            line -= 1
        end = node.end_lineno or node.lineno
        inline = [comments[n] for n in range(node.lineno, end + 1) if n in comments]
        text = " ".join(part for part in [*above, *inline] if part)
        # A comment above a run of related fields with no blank line between them speaks for
        # the run (the two backoff bounds, the lease TTL and its renewal, the services' URLs).
        name = node.target.id
        follows = previous is not None and previous[0] == node.lineno - 1
        if not text and previous is not None and follows and _related(previous[1], name):
            text = previous[2]
        if text:
            found[name] = text
        previous = (end, name, text)
    if len(fields) == 1 and fields[0].lineno and not found and cls.__doc__:
        # A one-field mixin (RELAY_SLOTS, OUTBOX_PUBLISHED_TTL_SECONDS) documents it in its
        # docstring.
        target = fields[0].target
        assert isinstance(target, ast.Name)
        found[target.id] = re.sub(r":\w+:`", "`", " ".join(cls.__doc__.split()))
    return found


def field_comment(cls: type[BaseSettings], name: str) -> str:
    """The field's description, else the nearest class in the MRO that comments it."""
    description = cls.model_fields[name].description
    if description:
        return description
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            comment = _comments_in(klass).get(name)
            if comment:
                return comment
    return ""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return ", ".join(repr(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type_name(arg) for arg in args if arg is not type(None)]
        return " or ".join(named) + (" (optional)" if type(None) in args else "")
    if origin is tuple:
        return f"JSON list of {_type_name(args[0])}" if args else "JSON list"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(info: FieldInfo) -> list[str]:
    bounds: list[str] = []
    for item in info.metadata:
        if isinstance(item, Ge):
            bounds.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            bounds.append(f"> {item.gt}")
        elif isinstance(item, Le):
            bounds.append(f"≤ {item.le}")
        elif isinstance(item, Lt):
            bounds.append(f"< {item.lt}")
        elif isinstance(item, MinLen):
            bounds.append(f"length ≥ {item.min_length}")
        elif isinstance(item, MaxLen):
            bounds.append(f"length ≤ {item.max_length}")
    return bounds


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return "computed at start-up"
    value = info.get_default()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return ", ".join(f"`{item}`" for item in value)
    if isinstance(value, Path):
        return f"`{value}`"
    if value == "":
        return '`""` (empty)'
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows(cls: type[BaseSettings]) -> list[tuple[str, str, str, str]]:
    """(variable, type and bounds, default, description) for each field of the class's table."""
    table = []
    for name in own_fields(cls):
        info = cls.model_fields[name]
        kind = ", ".join([_type_name(info.annotation), *_bounds(info)])
        table.append((variable_of(cls, name), kind, _default(info), field_comment(cls, name)))
    return table


def render() -> str:
    parts: list[str] = []
    for heading, path in SETTINGS_CLASSES:
        cls = settings_class(path)
        prefix = str(cls.model_config.get("env_prefix") or "")
        parts.append(f"## {heading}\n")
        where = f"`{path.replace(':', '.')}`"
        if prefix:
            parts.append(
                f"{where}: its own variables carry the prefix `{prefix}`; it reads the "
                "infrastructure variables above too.\n"
            )
        else:
            parts.append(f"{where}: un-prefixed variables.\n")
        parts.append("| variable | type | default | what it is |\n| --- | --- | --- | --- |")
        for variable, kind, default, comment in rows(cls):
            parts.append(f"| `{variable}` | {_cell(kind)} | {default} | {_cell(comment)} |")
        parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_: object) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, render())
