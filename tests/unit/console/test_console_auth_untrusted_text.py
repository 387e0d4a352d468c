"""A credential in characters nobody signs (non-ASCII cookie, CSRF field or header, a superscript
digit) is refused like any wrong one, 401 or 403, never a 500: through the console's real app.

No backend is reached: every request here is refused before a page reads MongoDB or Kafka (the
MongoDB client is lazy and points at a closed port, the chart sampler never wakes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.console.app import create_app
from services.console.auth import CSRF_FIELD, SESSION_COOKIE, Keys
from services.console.settings import MIN_TOKEN_CHARS, ConsoleSettings

TOKEN = "t" * MIN_TOKEN_CHARS
SESSION_SECONDS = 3600.0


@pytest.fixture
async def console() -> AsyncIterator[httpx.AsyncClient]:
    settings = ConsoleSettings(
        token=TOKEN,
        mongo_uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=100",
        sample_seconds=300,
        session_hours=SESSION_SECONDS / 3600,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        # raise_app_exceptions=False: a crash must show as the 500 a browser would get.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as http:
            yield http


def _cookie_header(value: str) -> tuple[bytes, bytes]:
    # Raw bytes, as a browser or a script can send them (HTTP headers are bytes; Starlette reads
    # them as latin-1).
    return (b"cookie", f"{SESSION_COOKIE}=".encode() + value.encode("utf-8"))


@pytest.mark.parametrize(
    "cookie", ["1.a.\u00e9", "\u00e9.\u00e9.\u00e9", "1.\u00e9.abc"], ids=["mac", "all", "nonce"]
)
async def test_a_non_ascii_session_cookie_is_401(console: httpx.AsyncClient, cookie: str) -> None:
    response = await console.get("/api/dlq", headers=[_cookie_header(cookie)])

    assert response.status_code == 401, response.text


async def test_a_signed_cookie_whose_time_is_not_ascii_digits_is_401(
    console: httpx.AsyncClient,
) -> None:
    # "²" passes str.isdigit() and int() raises on it. Only the token's holder can sign it, but
    # a signed cookie is still text from a browser.
    issued, nonce = "\u00b2", "nonce"
    mac = Keys(TOKEN, SESSION_SECONDS)._mac("session", f"{issued}.{nonce}")
    cookie = f"{SESSION_COOKIE}={issued}.{nonce}.{mac}".encode("latin-1")

    response = await console.get("/api/dlq", headers=[(b"cookie", cookie)])

    assert response.status_code == 401, response.text


async def _signed_in(console: httpx.AsyncClient) -> None:
    response = await console.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303, response.text
    assert SESSION_COOKIE in console.cookies


async def test_a_non_ascii_csrf_field_is_403(console: httpx.AsyncClient) -> None:
    await _signed_in(console)

    response = await console.post("/logout", data={CSRF_FIELD: "\u00e9"})

    assert response.status_code == 403, response.text
    assert SESSION_COOKIE in console.cookies  # not signed out by a forged form


async def test_a_non_ascii_csrf_header_is_403(console: httpx.AsyncClient) -> None:
    await _signed_in(console)

    response = await console.post(
        "/api/dlq/replay",
        json={"group": "inventory"},
        headers=[(b"x-csrf-token", "\u00e9".encode())],
    )

    assert response.status_code == 403, response.text


async def test_a_non_ascii_token_at_sign_in_is_401(console: httpx.AsyncClient) -> None:
    response = await console.post("/login", data={"token": "\u00e9" * MIN_TOKEN_CHARS})

    assert response.status_code == 401, response.text
    assert SESSION_COOKIE not in console.cookies


async def test_a_non_ascii_bearer_token_is_401(console: httpx.AsyncClient) -> None:
    header = (b"authorization", b"Bearer " + ("\u00e9" * MIN_TOKEN_CHARS).encode())

    response = await console.get("/api/dlq", headers=[header])

    assert response.status_code == 401, response.text
