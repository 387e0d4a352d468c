"""Every order route asks for a valid bearer token of the configured issuer; each bad one is
refused with its RFC 6750 answer, in the API's error format, and writes nothing.

The API trusts the embedded stack's development issuer (its JWKS over HTTP); the tokens are
forged here the ways an attacker or a broken client would: no token, ``alg: none``, HS256 "signed"
with the issuer's public key, expired, not yet valid, another issuer, another audience, a key the
issuer does not publish, a payload changed after signing, not a JWT, a header too long, two
``Authorization`` headers. The identity provider being unreachable for a key not cached is 503,
never an accept and never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.order.settings import OrderSettings
from shared.auth import ORDER_API_AUDIENCE
from shared.mongo import MongoClient
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from stack.issuer import load_or_create_key, mint_token, public_jwk
from tests.integration.order.conftest import (
    DEFAULT_USER,
    TEST_DATABASE,
    Api,
    auth_settings,
    in_process_api,
    order_body,
    token_for,
)

Headers = list[tuple[str, str]]


def _segment(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(stack: Stack, user: str = DEFAULT_USER) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": stack.config.issuer_url,
        "aud": ORDER_API_AUDIENCE,
        "sub": user,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }


def _issuer_key(stack: Stack) -> ec.EllipticCurvePrivateKey:
    return load_or_create_key(stack.config.issuer_key_path)


def _bearer(token: str) -> Headers:
    return [("Authorization", f"Bearer {token}")]


def _alg_none(stack: Stack) -> Headers:
    header = {"alg": "none", "typ": "JWT", "kid": public_jwk(_issuer_key(stack))["kid"]}
    return _bearer(f"{_segment(header)}.{_segment(_claims(stack))}.")


def _hs256_with_the_public_key(stack: Stack) -> Headers:
    # The key-confusion forgery: the issuer's public key (anyone may have it) as an HMAC secret.
    public_pem = (
        _issuer_key(stack)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": public_jwk(_issuer_key(stack))["kid"]}
    signing_input = f"{_segment(header)}.{_segment(_claims(stack))}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return _bearer(f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}")


def _tampered(stack: Stack) -> Headers:
    # A genuine token of another user with its payload swapped for DEFAULT_USER's claims.
    header, _, signature = token_for(stack, "someone-else").split(".")
    return _bearer(f"{header}.{_segment(_claims(stack))}.{signature}")


def _unknown_kid(stack: Stack) -> Headers:
    # Well formed and signed, by a key the issuer does not publish (its kid is that key's own).
    stranger = ec.generate_private_key(ec.SECP256R1())
    return _bearer(mint_token(stranger, issuer=stack.config.issuer_url, subject=DEFAULT_USER))


CASES: list[tuple[str, Callable[[Stack], Headers], int, str]] = [
    ("no token", lambda stack: [], 401, "Bearer"),
    (
        "another scheme",
        lambda stack: [("Authorization", "Basic dXNlci0xOnMzY3JldA==")],
        401,
        "Bearer",
    ),
    ("alg none", _alg_none, 401, 'Bearer error="invalid_token"'),
    (
        "HS256 signed with the public key",
        _hs256_with_the_public_key,
        401,
        'Bearer error="invalid_token"',
    ),
    (
        "expired",
        lambda stack: _bearer(token_for(stack, DEFAULT_USER, now=time.time() - 7200)),
        401,
        'Bearer error="invalid_token"',
    ),
    (
        "not yet valid",
        lambda stack: _bearer(token_for(stack, DEFAULT_USER, now=time.time() + 600)),
        401,
        'Bearer error="invalid_token"',
    ),
    (
        "wrong issuer",
        lambda stack: _bearer(
            mint_token(_issuer_key(stack), issuer="http://127.0.0.1:1/other", subject=DEFAULT_USER)
        ),
        401,
        'Bearer error="invalid_token"',
    ),
    (
        "wrong audience",
        lambda stack: _bearer(token_for(stack, DEFAULT_USER, audience="another-api")),
        401,
        'Bearer error="invalid_token"',
    ),
    ("unknown kid", _unknown_kid, 401, 'Bearer error="invalid_token"'),
    ("tampered payload", _tampered, 401, 'Bearer error="invalid_token"'),
    ("not a JWT", lambda stack: _bearer("not-a-jwt-at-all"), 401, 'Bearer error="invalid_token"'),
    (
        "oversized header",
        lambda stack: _bearer("eyJ" + "A" * 100_000),
        400,
        'Bearer error="invalid_request"',
    ),
    (
        "two Authorization headers",
        # Both valid, of two users: which one would count is exactly what must not be guessed.
        lambda stack: _bearer(token_for(stack, DEFAULT_USER)) + _bearer(token_for(stack, "u2")),
        400,
        'Bearer error="invalid_request"',
    ),
    (
        "Bearer without a token",
        lambda stack: [("Authorization", "Bearer ")],
        400,
        'Bearer error="invalid_request"',
    ),
]


def _assert_refused(
    response: httpx.Response, status: int, challenge: str, headers: Headers
) -> None:
    assert response.status_code == status, response.text
    if challenge == "Bearer":  # no credentials: RFC 6750 asks for a bare challenge, no code
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        assert response.headers["www-authenticate"].startswith(challenge), response.headers
    body = response.json()
    assert set(body) == {"error", "message", "fields"}, body
    assert body["error"] == ("unauthorized" if challenge == "Bearer" else challenge.split('"')[1])
    for _, value in headers:  # the refusal never repeats what was sent
        credentials = value.partition(" ")[2].strip()
        assert not credentials or credentials not in response.text


@pytest.mark.parametrize(
    ("headers_of", "status", "challenge"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_a_bad_token_is_refused_on_every_order_route_and_writes_nothing(
    api: Api, headers_of: Callable[[Stack], Headers], status: int, challenge: str
) -> None:
    existing = await api.http.post("/orders", json=order_body())
    assert existing.status_code == 201, existing.text
    order_id = existing.json()["id"]
    before = await api.counts()
    headers = headers_of(api.stack)

    create = await api.anonymous.post(
        "/orders", json=order_body(), headers=[*headers, ("Idempotency-Key", "bad-token-1")]
    )
    cancel = await api.anonymous.post(f"/orders/{order_id}/cancel", headers=headers)
    read = await api.anonymous.get(f"/orders/{order_id}", headers=headers)

    for response in (create, cancel, read):
        _assert_refused(response, status, challenge, headers)
    assert await api.counts() == before
    assert (await api.db.orders.find_one({}))["status"] == existing.json()["status"]


async def test_a_refused_request_with_an_invalid_body_is_still_refused_for_its_token(
    api: Api,
) -> None:
    # The token is checked before the body's fields: no field-level oracle without credentials.
    response = await api.anonymous.post("/orders", json={"userId": 42, "items": "none"})
    _assert_refused(response, 401, "Bearer", [])
    assert await api.counts() == (0, 0)


async def test_the_probes_and_the_openapi_document_stay_open(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        response = await api.anonymous.get(path)
        assert response.status_code == 200, (path, response.text)


async def test_the_openapi_document_declares_the_bearer_scheme_on_exactly_the_order_routes(
    api: Api,
) -> None:
    document = (await api.anonymous.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    secured = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("security") == [{"bearer": []}]
    }
    assert secured == {
        ("POST", "/orders"),
        ("POST", "/orders/{order_id}/cancel"),
        ("GET", "/orders/{order_id}"),
    }
    for method, path in secured:
        responses = document["paths"][path][method.lower()]["responses"]
        assert {"400", "401"} <= set(responses), (method, path)
        assert "WWW-Authenticate" in responses["401"]["headers"]
    assert "403" in document["paths"]["/orders"]["post"]["responses"]


async def test_jwks_unreachable_for_a_key_not_cached_is_503_never_an_accept(
    stack: Stack, mongo: MongoClient, closed_port: int
) -> None:
    # The API pointed at a JWKS nobody serves (connections refused): it has no key cached. (Its
    # own app, not the api fixture's: Beanie binds the models of one app per process.)
    settings = OrderSettings(mongo_uri=stack.config.mongo_uri, database=TEST_DATABASE)
    await mongo.drop_database(TEST_DATABASE)
    away = auth_settings(stack, AUTH_JWKS_URL=f"http://127.0.0.1:{closed_port}/jwks.json")
    async with in_process_api(settings, stack, away) as (_, http):
        created = await http.post("/orders", json=order_body())
        read = await http.get(f"/orders/{'a' * 24}")
        ready = await http.get("/readyz")

    for response in (created, read):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "service_unavailable"
        assert int(response.headers["retry-after"]) >= 1
    # MongoDB itself was there all along: the 503 is the identity provider's.
    assert ready.status_code == 200, ready.text
    database = mongo[TEST_DATABASE]
    assert await database.orders.count_documents({}) == 0
    assert await database[OUTBOX_COLLECTION].count_documents({}) == 0
