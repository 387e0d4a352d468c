"""The console's sign-in pieces: token policy, signed sessions, CSRF tokens, safe redirects,
and the grouping of dead letters by cause. Pure logic; the browser tests drive the real thing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from services.console.app import _local
from services.console.auth import Keys, Session
from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings
from services.console.views import cause_of, group_dead_letters
from shared.dlq import StoredDlqRecord

TOKEN = "t" * MIN_TOKEN_CHARS


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        ConsoleSettings(token="short-token")


def test_the_console_process_refuses_to_start_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSOLE_")}
    done = subprocess.run(
        [sys.executable, "-m", "services.console"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "CONSOLE_TOKEN" in done.stderr


def test_a_session_cookie_is_valid_only_unaltered_and_until_it_expires() -> None:
    keys = Keys(TOKEN, session_seconds=60)
    cookie = keys.new_session()
    assert keys.session(cookie) is not None
    issued, nonce, mac = cookie.split(".")
    assert keys.session(f"{issued}.{nonce}x.{mac}") is None
    assert keys.session(f"{int(issued) + 1}.{nonce}.{mac}") is None
    assert keys.session("garbage") is None
    # Signed with another token: everybody is signed out when the token changes.
    assert Keys("u" * MIN_TOKEN_CHARS, 60).session(cookie) is None
    old = Keys(TOKEN, session_seconds=60)
    stale_issued = str(int(time.time()) - 61)
    stale = f"{stale_issued}.{nonce}.{old._mac('session', f'{stale_issued}.{nonce}')}"
    assert keys.session(stale) is None


def test_csrf_token_belongs_to_one_session_and_bearer_needs_none() -> None:
    keys = Keys(TOKEN, 60)
    first = keys.session(keys.new_session())
    second = keys.session(keys.new_session())
    assert first is not None and second is not None
    assert keys.csrf_ok(first, keys.csrf_for(first))
    assert not keys.csrf_ok(first, keys.csrf_for(second))
    assert not keys.csrf_ok(first, None)
    assert keys.csrf_ok(Session("", "bearer"), None)


def test_bearer_header_must_match_the_token_exactly() -> None:
    keys = Keys(TOKEN, 60)
    assert keys.bearer_ok(f"Bearer {TOKEN}")
    assert not keys.bearer_ok(f"Bearer {TOKEN}x")
    assert not keys.bearer_ok(TOKEN)
    assert not keys.bearer_ok(None)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dlq", "/dlq"),
        ("/orders/abc", "/orders/abc"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
    ],
)
def test_sign_in_redirects_only_to_pages_of_the_console(target: str, expected: str) -> None:
    assert _local(target) == expected


def _record(offset: int, reason: str, group: str) -> StoredDlqRecord:
    headers = [("failureReason", reason.encode()), ("consumerGroup", group.encode())]
    return StoredDlqRecord("t.dlq", 0, offset, b"k", b"v", headers)


def test_dead_letters_are_grouped_by_group_and_cause_shape() -> None:
    records = [
        _record(0, "PoisonMessage: field 'total' invalid at 3", "inventory-service"),
        _record(1, "PoisonMessage: field 'items' invalid at 17", "inventory-service"),
        _record(2, "PoisonMessage: field 'total' invalid at 3", "email-service"),
        _record(3, "SMTPResponseException: 550 mailbox unavailable", "email-service"),
    ]
    groups = group_dead_letters(records)
    assert [(g.group, g.cause, len(g.records)) for g in groups] == [
        ("inventory-service", "PoisonMessage: field … invalid at …", 2),
        ("email-service", "PoisonMessage: field … invalid at …", 1),
        ("email-service", "SMTPResponseException: … mailbox unavailable", 1),
    ]


def test_a_cause_never_shows_a_uri_password() -> None:
    record = _record(0, "ConnectionError: mongodb://admin:s3cret@db:27017 refused", "g")
    assert "s3cret" not in cause_of(record)
