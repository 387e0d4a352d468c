"""``python -m stack up`` runs the console with CONSOLE_TOKEN from the environment, or one it
generates once (owner-only file) and reuses on later starts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.console.settings import MIN_TOKEN_CHARS
from stack.__main__ import console_banner
from stack.config import StackConfig
from stack.supervisor import console_token


def test_a_generated_token_is_long_enough_kept_owner_only_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSOLE_TOKEN", raising=False)
    config = StackConfig(root=tmp_path)
    token, generated = console_token(config)
    assert generated
    assert len(token) >= MIN_TOKEN_CHARS
    assert stat.S_IMODE(config.console_token_path.stat().st_mode) == 0o600
    assert console_token(config) == (token, False)


def test_the_environment_token_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_TOKEN", "e" * MIN_TOKEN_CHARS)
    assert console_token(StackConfig(root=tmp_path)) == ("e" * MIN_TOKEN_CHARS, False)
    assert not StackConfig(root=tmp_path).console_token_path.exists()


def test_the_start_up_banner_shows_a_generated_token_but_never_the_operators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = StackConfig(root=tmp_path)
    monkeypatch.delenv("CONSOLE_TOKEN", raising=False)
    generated = "g" * MIN_TOKEN_CHARS
    shown = console_banner(config, generated)
    assert shown.count(generated) == 1
    assert str(config.console_token_path) in shown
    operators = "o" * MIN_TOKEN_CHARS
    monkeypatch.setenv("CONSOLE_TOKEN", operators)
    shown = console_banner(config, operators)
    assert operators not in shown
    assert "CONSOLE_TOKEN" in shown
