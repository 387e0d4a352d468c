"""MkDocs hook: the alert rules as they are in ``deploy/prometheus/alerts.yml``, at build time.

A page that contains ``<!-- alerts-reference -->`` gets, in its place, one section per alert
rule: when it fires (the expression and its ``for``), its severity, why it exists (the comment
the rule file writes above it), what to open first (its ``description``) and its runbook. The
page cannot state a threshold the rules no longer have. A runbook annotation that names a page
of this site (``docs/...``) becomes a link, which ``mkdocs build --strict`` checks.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Final

import yaml

__all__ = ["RULES", "alert_comments", "on_page_markdown", "render"]

PLACEHOLDER: Final = "<!-- alerts-reference -->"
ROOT: Final = Path(__file__).resolve().parents[2]
RULES: Final = ROOT / "deploy" / "prometheus" / "alerts.yml"
_ALERT_LINE: Final = re.compile(r"^\s*- alert:\s*(\S+)")


def alert_comments(text: str) -> dict[str, str]:
    """Alert name -> the comment lines right above its ``- alert:`` line, joined."""
    lines = text.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines):
        match = _ALERT_LINE.match(line)
        if not match:
            continue
        above: list[str] = []
        index = number - 1
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        found[match.group(1)] = " ".join(part for part in above if part)
    return found


def _runbook(target: str, page_path: str) -> str:
    """A link when the runbook is a page of this site, relative to the page showing it."""
    if target.startswith("docs/"):
        page, _, anchor = target.removeprefix("docs/").partition("#")
        relative = posixpath.relpath(page, posixpath.dirname(page_path) or ".")
        return f"[runbook]({relative}{'#' + anchor if anchor else ''})"
    return f"runbook: `{target}`"


def render(page_path: str) -> str:
    text = RULES.read_text(encoding="utf-8")
    comments = alert_comments(text)
    document: dict[str, Any] = yaml.safe_load(text)
    parts: list[str] = []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert")
            if not name:
                continue
            labels = rule.get("labels", {})
            annotations = rule.get("annotations", {})
            when = f"`{' '.join(str(rule['expr']).split())}`"
            if rule.get("for"):
                when += f" for {rule['for']}"
            parts.append(f"### `{name}`\n")
            parts.append(f"- **Fires when** {when}; severity **{labels.get('severity', '-')}**.")
            if comments.get(name):
                parts.append(f"- **Why**: {comments[name]}")
            if annotations.get("description"):
                parts.append(f"- **Open first**: {' '.join(annotations['description'].split())}")
            if annotations.get("runbook"):
                parts.append(f"- {_runbook(str(annotations['runbook']), page_path)}")
            parts.append("")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    page = kwargs["page"]
    return markdown.replace(PLACEHOLDER, render(str(page.file.src_uri)))
