"""MkDocs hook: the command-line reference, captured from each CLI's own ``--help`` at build time.

A page that contains ``<!-- cli-reference -->`` gets, in its place, the ``--help`` text of every
command in :data:`COMMANDS` and of each of its subcommands (read from the braces of argparse's
usage line), so the page shows exactly what the installed code accepts. All of them run in one
child interpreter (this file run as a script, from the repository root), each through ``runpy``
as ``python -m`` would run it: argparse prints the help and exits before any command does
anything, and the imports are paid once. A command that fails to print its help fails the build.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Final

PLACEHOLDER: Final = "<!-- cli-reference -->"
ROOT: Final = Path(__file__).resolve().parents[2]

# (module, whether its first positional argument names subcommands). Only modules whose entry
# point parses its arguments: `python -m services.order` and `python -m services.console` take
# none (they serve at once), so they are not here.
COMMANDS: Final = (
    ("stack", True),
    ("stack.demo", False),
    ("services.relay", True),
    ("services.inventory", True),
    ("services.email", True),
    ("shared.dlq", True),
    ("bench", False),
)
# A stable width and no colour, so the page does not depend on the terminal it was built in.
_ENV: Final = {"COLUMNS": "100", "NO_COLOR": "1", "PYTHON_COLORS": "0"}
_TIMEOUT_SECONDS: Final = 120


def subcommands(help_output: str) -> list[str]:
    """The choices of argparse's subcommand argument, as its usage line shows them."""
    found = re.search(r"\{([a-z][a-z0-9,-]*)\}", help_output)
    return found.group(1).split(",") if found else []


def _help_in_process(module: str, *args: str) -> str:
    """``python -m module *args --help`` run here; raises unless it exits 0."""
    out = io.StringIO()
    sys.argv = [f"python -m {module}", *args, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code not in (0, None):
            command = f"python -m {module} {' '.join(args)} --help"
            raise RuntimeError(f"{command} exited {stop.code}") from None
        return out.getvalue().rstrip()
    raise RuntimeError(f"python -m {module} {' '.join(args)} --help did not exit")


def _capture_all() -> dict[str, str]:
    """Every command's and subcommand's help, keyed by the command line (child side)."""
    texts: dict[str, str] = {}
    for module, nested in COMMANDS:
        top = _help_in_process(module)
        texts[f"python -m {module}"] = top
        for sub in subcommands(top) if nested else []:
            texts[f"python -m {module} {sub}"] = _help_in_process(module, sub)
    return texts


def capture() -> dict[str, str]:
    """Run this file in a child interpreter and return what :func:`_capture_all` found there."""
    done = subprocess.run(
        [sys.executable, __file__],
        cwd=ROOT,
        env={**os.environ, **_ENV},
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"capturing the CLIs' help failed: {done.stderr.strip()[-800:]}")
    texts: dict[str, str] = json.loads(done.stdout)
    return texts


def render() -> str:
    parts: list[str] = []
    for command, text in capture().items():
        if command.count(" ") == 2:  # "python -m module": a new section
            parts.append(f"## `{command}`\n")
        parts.append(f"### `{command} --help`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_: object) -> str:
    if PLACEHOLDER not in markdown:
        return markdown
    return markdown.replace(PLACEHOLDER, render())


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    result = _capture_all()
    sys.stdout.write(json.dumps(result))
