"""The documentation's reference pages are generated from the code, and cover all of it: every
settings class has a table and every field a row, every operation of the order API a section,
and the CLI page finds every subcommand. (`make test` also builds the site with --strict.)"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from docs.hooks import alerts_reference, cli_reference, openapi_reference, settings_reference
from docs.hooks.settings_reference import SETTINGS_CLASSES, field_comment, rows, settings_class
from shared.settings import InfraSettings

ROOT = Path(__file__).resolve().parents[3]


def _classes_with_an_env_prefix() -> set[str]:
    """Every class under services/ and shared/ whose model_config names an env_prefix."""
    found: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and any(
                            isinstance(t, ast.Name) and t.id == "model_config"
                            for t in statement.targets
                        )
                        and "env_prefix" in ast.unparse(statement.value)
                    ):
                        found.add(f"{module}:{node.name}")
    return found


def test_every_settings_class_of_a_service_has_a_table() -> None:
    listed = {path for _, path in SETTINGS_CLASSES}
    prefixed = _classes_with_an_env_prefix()
    assert prefixed, "the scan found no settings class at all"
    assert prefixed <= listed, f"add to SETTINGS_CLASSES: {sorted(prefixed - listed)}"


def test_the_settings_tables_list_every_field_of_every_settings_class() -> None:
    page = settings_reference.render()
    for _, path in SETTINGS_CLASSES:
        cls = settings_class(path)
        in_its_table = {variable for variable, *_ in rows(cls)}
        in_infra_table = {variable for variable, *_ in rows(InfraSettings)}
        for name in cls.model_fields:
            variable = settings_reference.variable_of(cls, name)
            assert variable in in_its_table | in_infra_table, f"{path}.{name} ({variable})"
            assert f"| `{variable}` |" in page


def test_the_settings_table_states_the_default_the_code_has() -> None:
    by_variable = {variable: default for variable, _, default, _ in rows(InfraSettings)}
    assert by_variable["KAFKA_BOOTSTRAP_SERVERS"] == "`127.0.0.1:9092`"
    assert by_variable["OTEL_EXPORTER_OTLP_ENDPOINT"] == "unset"


class _Documented(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DOC_")

    # How long one thing may take.
    # Second line of the same comment.
    wait_seconds: float = Field(default=1.0, gt=0)
    retry_initial: float = 0.1
    retry_max: float = 5.0
    other: int = 3  # said at the end of the line

    plain: str = "x"
    described: int = Field(default=1, description="from the field itself")


def test_a_field_is_described_by_the_comment_the_code_gives_it() -> None:
    assert field_comment(_Documented, "wait_seconds") == (
        "How long one thing may take. Second line of the same comment."
    )
    assert field_comment(_Documented, "other") == "said at the end of the line"
    assert field_comment(_Documented, "described") == "from the field itself"
    assert field_comment(_Documented, "plain") == ""


def test_a_comment_over_a_run_of_related_fields_speaks_for_each_of_them() -> None:
    # retry_max follows retry_initial with no blank line and shares its first word; `other`
    # has its own comment, and an unrelated field never inherits one.
    class Run(BaseSettings):
        # Pacing of the retries.
        retry_initial: float = 0.1
        retry_max: float = 5.0
        unrelated: int = 1

    assert field_comment(Run, "retry_max") == "Pacing of the retries."
    assert field_comment(Run, "unrelated") == ""


def test_every_operation_and_schema_of_the_order_api_is_on_the_page() -> None:
    document = openapi_reference.order_api_document()
    page = openapi_reference.render_order_api(document)
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"### `{method.upper()} {path}`" in page
    for name in document["components"]["schemas"]:
        assert f"{{ #schema-{name.lower()} }}" in page


def test_the_cli_page_finds_the_subcommands_in_argparse_usage() -> None:
    usage = "usage: python -m services.relay [-h] {run,retry,reslot} ...\n"
    assert cli_reference.subcommands(usage) == ["run", "retry", "reslot"]
    assert cli_reference.subcommands("usage: python -m x [-h] {seed-stock,run}") == [
        "seed-stock",
        "run",
    ]
    assert cli_reference.subcommands("usage: python -m stack.demo [-h] [--orders ORDERS]") == []


def _mermaid_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```mermaid\n")[1:]]


def test_the_readme_shows_the_site_home_page_picture() -> None:
    # The one architecture picture lives in two files (GitHub shows the README, the site its
    # home page); they must not drift apart.
    readme = _mermaid_blocks(ROOT / "README.md")
    home = _mermaid_blocks(ROOT / "docs" / "index.md")
    assert len(readme) == 1
    assert readme == home


def test_every_alert_rule_is_on_the_alerts_page_with_its_expression() -> None:
    document = yaml.safe_load(alerts_reference.RULES.read_text(encoding="utf-8"))
    page = alerts_reference.render("operating/alerts.md")
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert rules
    for rule in rules:
        assert f"### `{rule['alert']}`" in page
        assert " ".join(str(rule["expr"]).split()) in page


def test_an_alert_is_explained_by_the_comment_above_it() -> None:
    text = (
        "groups:\n  - name: g\n    rules:\n"
        "      # Why it fires.\n      # Second line.\n      - alert: First\n        expr: x > 0\n"
        "      - alert: Second\n        expr: y > 0\n"
    )
    assert alerts_reference.alert_comments(text) == {
        "First": "Why it fires. Second line.",
        "Second": "",
    }
