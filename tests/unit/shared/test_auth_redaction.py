"""Bearer tokens and Authorization headers never reach output: redact() masks them in any text
(logs pass every line through it), and request spans never carry the header, even when an
operator turns on OpenTelemetry's request-header capture."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.logging import JsonFormatter
from shared.redaction import redact
from stack.issuer import mint_token

pytestmark = pytest.mark.unit

TOKEN = mint_token(ec.generate_private_key(ec.SECP256R1()), issuer="http://i", subject="alice")
SIGNATURE = TOKEN.rsplit(".", 1)[1]
BASIC = "YWxpY2U6czNjcmV0LXBhc3N3b3Jk"  # alice:s3cret-password


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {TOKEN}",
        repr({"authorization": f"Bearer {TOKEN}", "accept": "*/*"}),
        repr([(b"authorization", f"bearer {TOKEN}".encode())]),
        f"token refused: {TOKEN}",
        f"curl -H 'Authorization: Bearer {TOKEN}' http://127.0.0.1:8000/orders",
        json.dumps({"access_token": TOKEN, "token_type": "Bearer"}),
    ],
    ids=["header-line", "headers-dict", "raw-asgi-headers", "bare-jwt", "curl", "token-response"],
)
def test_redact_masks_bearer_tokens_wherever_they_appear(text: str) -> None:
    shown = redact(text)
    assert SIGNATURE not in shown
    assert TOKEN.split(".")[1] not in shown  # the claims (subject, e-mail ...) too
    assert redact(shown) == shown  # idempotent


def test_redact_masks_basic_credentials() -> None:
    assert BASIC not in redact(f"Authorization: Basic {BASIC}")


def test_redact_keeps_the_challenge_and_plain_words() -> None:
    for text in (
        'WWW-Authenticate: Bearer error="invalid_token", error_description="the token has expired"',
        "a bearer token is required: Authorization: Bearer <token>",
        "Bearer",
        "the basic idea",
    ):
        assert redact(text) == text


def test_a_log_line_shows_no_token_in_message_or_fields() -> None:
    record = logging.LogRecord(
        "services.order", logging.WARNING, __file__, 1, "refused %s", (f"Bearer {TOKEN}",), None
    )
    record.headers = {"authorization": f"Bearer {TOKEN}"}
    line = JsonFormatter("order").format(record)
    assert SIGNATURE not in line
    assert "refused" in line


_SPAN_PROBE = """
import asyncio, json, os, sys
import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shared.tracing import configure_tracing, instrument_fastapi

configure_tracing("order", "http://127.0.0.1:9")  # nothing listens: spans stay in memory
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
app = FastAPI()

@app.get("/orders/x")
async def read() -> dict[str, str]:
    return {"ok": "yes"}

instrument_fastapi(app)

async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        await client.get("/orders/x", headers={"Authorization": sys.argv[1], "X-Probe": "seen"})

asyncio.run(main())
print(json.dumps([dict(s.attributes or {}) for s in memory.get_finished_spans()], default=str))
sys.stdout.flush()
os._exit(0)  # the OTLP exporter's retries to the closed port are not this test's business
"""


def test_request_spans_never_carry_the_authorization_header() -> None:
    # An operator debugging with OpenTelemetry's standard switch capturing every request header.
    env = os.environ | {"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*"}
    result = subprocess.run(
        [sys.executable, "-c", _SPAN_PROBE, f"Bearer {TOKEN}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    attributes = json.dumps(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "seen" in attributes  # header capture is on: the probe header was recorded
    assert SIGNATURE not in attributes
