"""The `demo` service's command exists and accepts every option the compose file passes.

Deliberately no skip when stack/demo.py is missing: `docker compose up demo` would fail on the
user's machine, so this test fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.unit.compose.compose_helpers import COMPOSE_FILE, REPO, load_model


def test_demo_entry_point_accepts_the_options_compose_passes() -> None:
    command = load_model(COMPOSE_FILE)["services"]["demo"]["command"]
    assert command[:3] == ["python", "-m", "stack.demo"]
    flags = [arg for arg in command[3:] if arg.startswith("--")]
    shown = subprocess.run(
        [sys.executable, "-m", "stack.demo", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, f"`python -m stack.demo --help` failed:\n{shown.stderr}"
    missing = [
        flag
        for flag in flags
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown.stdout)
    ]
    assert missing == [], f"stack.demo does not accept {missing}; its --help:\n{shown.stdout}"
