"""No password of a connection URI reaches output: logs, settings errors, CLI errors, /readyz.

The processes below are started without any server behind them: a settings error stops them
before they connect, and the relay CLI is pointed at a closed port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys

import pytest

from shared.health import HealthServer
from shared.logging import JsonFormatter
from shared.redaction import redact
from stack.config import free_port

PASSWORD = "s3cret-Pa55"
MONGO = f"mongodb://admin:{PASSWORD}@db.internal:27017/orders"
REDIS = f"redis://:{PASSWORD}@cache.internal:6379/0"
SMTP = f"smtp://mailer:{PASSWORD}@mail.internal:587"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (MONGO, "mongodb://admin:***@db.internal:27017/orders"),
        (
            f"mongodb+srv://admin:{PASSWORD}@cluster.example",
            "mongodb+srv://admin:***@cluster.example",
        ),
        (REDIS, "redis://:***@cache.internal:6379/0"),
        (f"rediss://default:{PASSWORD}@cache:6380", "rediss://default:***@cache:6380"),
        (SMTP, "smtp://mailer:***@mail.internal:587"),
        # An unescaped "@" in the password: still masked whole.
        ("mongodb://admin:pa@ss@db:27017", "mongodb://admin:***@db:27017"),
        (
            f"mongodb://db/?authSource=admin&password={PASSWORD}",
            "mongodb://db/?authSource=admin&password=***",
        ),
    ],
)
def test_redact_masks_the_password_and_keeps_user_and_host(uri: str, shown: str) -> None:
    assert redact(uri) == shown
    assert redact(f"error at {uri}: refused") == f"error at {shown}: refused"


def test_redact_leaves_text_without_credentials_alone() -> None:
    for text in (
        "mongodb://127.0.0.1:27017/?replicaSet=secantus",
        "mongodb://h1:27017,h2:27017/?replicaSet=rs0",
        "redis://127.0.0.1:6379/0",
        "mail to ada@example.com",
        "a=b",
    ):
        assert redact(text) == text


def test_redact_masks_every_uri_of_a_line() -> None:
    line = repr({"mongo_uri": MONGO, "redis_url": REDIS})
    assert PASSWORD not in redact(line)
    assert "admin:***@db.internal" in redact(line)


def test_a_log_line_shows_no_uri_password_in_message_fields_or_traceback() -> None:
    try:
        raise ConnectionError(f"cannot reach {MONGO}")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "services.relay", logging.ERROR, __file__, 1, "mongo down at %s", (MONGO,), exc_info
    )
    record.reason = repr(ConnectionError(REDIS))
    line = JsonFormatter("relay").format(record)
    assert PASSWORD not in line
    parsed = json.loads(line)
    assert parsed["msg"] == "mongo down at mongodb://admin:***@db.internal:27017/orders"
    assert "redis://:***@cache.internal" in parsed["reason"]
    assert "mongodb://admin:***@db.internal" in parsed["exc"]


def _run(module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # Only what the interpreter needs, so no MONGO_URI etc. of the caller leaks in.
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# Short on purpose: pydantic abbreviates a long input in the middle, which can hide a password
# by luck; these fit whole into its message.
SHORT_MONGO = f"mongodb://admin:{PASSWORD}@db/x"
SHORT_REDIS = f"redis://:{PASSWORD}@cache/0"


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("services.relay", ("retry", "--all-failed")),
        ("services.relay", ()),
        ("services.order", ()),
        ("services.inventory", ()),
        ("services.email", ()),
        ("services.order.verdicts", ()),
    ],
)
def test_a_settings_error_names_the_problem_without_the_password(
    module: str, args: tuple[str, ...]
) -> None:
    # Production refuses a MONGO_URI without a replica set: the error is about the URI, and
    # pydantic's own message prints the whole input, password included.
    result = _run(module, *args, ENVIRONMENT="production", MONGO_URI=SHORT_MONGO)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert PASSWORD not in output
    assert "MONGO_URI" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("module", "args", "variable", "value", "shown"),
    [
        (
            "services.relay",
            ("retry", "--all-failed"),
            "MONGO_URI",
            SHORT_MONGO.replace("mongodb:", "mongo:"),
            "mongo://admin:***@db/x",
        ),
        (
            "services.email",
            (),
            "REDIS_URL",
            SHORT_REDIS.replace("redis:", "http:"),
            "http://:***@cache/0",
        ),
        (
            "shared.dlq",
            ("list",),
            "REDIS_URL",
            SHORT_REDIS.replace("redis:", "rdis:"),
            "rdis://:***@cache/0",
        ),
    ],
)
def test_a_malformed_uri_setting_is_named_and_shown_redacted(
    module: str, args: tuple[str, ...], variable: str, value: str, shown: str
) -> None:
    result = _run(module, *args, **{variable: value})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert PASSWORD not in output
    assert variable in output and shown in output
    assert "Traceback" not in output


def test_the_relay_cli_error_path_shows_no_password() -> None:
    closed = f"mongodb://admin:{PASSWORD}@127.0.0.1:{free_port()}/?replicaSet=rs0"
    result = _run(
        "services.relay", "retry", "--all-failed", MONGO_URI=closed, MONGO_TIMEOUT_SECONDS="1"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "MongoDB unavailable" in output
    assert PASSWORD not in output
    assert "admin:***@127.0.0.1" in output


async def _get(port: int, path: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), body


async def test_a_readyz_body_says_why_without_the_password() -> None:
    from prometheus_client import CollectorRegistry

    async def failing() -> dict[str, bool]:
        raise ConnectionError(f"cannot reach {MONGO}")

    server = HealthServer("127.0.0.1", 0, failing, CollectorRegistry())
    await server.start()
    try:
        status, body = await _get(server.port, "/readyz")
    finally:
        await server.stop()
    assert status.endswith("503 Service Unavailable")
    assert PASSWORD.encode() not in body
    assert json.loads(body)["reason"] == (
        "ConnectionError('cannot reach mongodb://admin:***@db.internal:27017/orders')"
    )


def test_an_uncaught_exception_is_one_redacted_log_line() -> None:
    # The last line of defence: whatever escapes every handler still goes through the formatter.
    program = (
        "from shared.logging import configure_logging\n"
        "configure_logging('relay')\n"
        f"raise RuntimeError('lost {SHORT_MONGO}')\n"
    )
    result = _run_python(program)
    assert result.returncode == 1
    assert PASSWORD not in result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["level"] == "CRITICAL"
    assert "RuntimeError: lost mongodb://admin:***@db/x" in line["exc"]


def _run_python(program: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-c", program],
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
