"""Bearer-token validation (shared.auth) against keys made here and a JWKS served by a real
HTTP server on loopback: every bad token of issue 23 refused, a good one accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.auth import (
    AuthSettings,
    InvalidToken,
    JwksKeys,
    KeysUnavailable,
    TokenValidator,
)
from shared.auth.keys import JwksFetchError, parse_jwks
from stack.issuer import mint_token, public_jwk
from tests.unit.shared.jwks_server import ISSUER, FakeClock, JwksServer

pytestmark = pytest.mark.unit

AUDIENCE = "order-api"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _settings(url: str, **overrides: Any) -> AuthSettings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_url": url,
        "leeway_seconds": 30,
        "jwks_min_refresh_seconds": 10,
        "jwks_max_age_seconds": 600,
        "jwks_timeout_seconds": 2,
    }
    return AuthSettings(**(values | overrides))


def _validator(url: str, clock: FakeClock | None = None, **overrides: Any) -> TokenValidator:
    settings = _settings(url, **overrides)
    keys = JwksKeys(
        settings.effective_jwks_url,
        algorithms=settings.algorithms,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        timeout_seconds=settings.jwks_timeout_seconds,
        clock=clock or time.monotonic,
    )
    return TokenValidator(settings, keys)


def _token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    ttl = claims.pop("ttl", 300)
    now = claims.pop("now", None)
    return mint_token(key, issuer=ISSUER, subject="alice", ttl_seconds=ttl, now=now, **claims)


def _b64(data: bytes) -> str:
    return urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return jwk | {"kid": kid, "use": "sig", "alg": "RS256"}


async def test_a_valid_token_yields_its_subject_and_scopes(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    principal = await _validator(jwks.url).validate(_token(ec_key))
    assert principal.subject == "alice"
    assert principal.issuer == ISSUER
    assert principal.scopes == frozenset({"orders"})


async def test_an_rs256_token_with_keycloak_roles_is_accepted(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks.keys = [_rsa_jwk(rsa_key, "rsa-1")]
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": ["account", AUDIENCE],
        "sub": "5b0c...-uuid",
        "exp": now + 60,
        "iat": now,
        "realm_access": {"roles": ["order-support"]},
        "resource_access": {AUDIENCE: {"roles": ["reader"]}, "account": {"roles": ["x"]}},
    }
    token = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"})
    principal = await _validator(jwks.url).validate(token)
    assert principal.roles == frozenset({"order-support", "reader"})
    assert principal.has_scope_or_role("order-support")


async def test_alg_none_is_refused(jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks.keys = [public_jwk(ec_key)]
    _, payload, _ = _token(ec_key).split(".")
    header = _b64(json.dumps({"alg": "none", "kid": public_jwk(ec_key)["kid"]}).encode())
    with pytest.raises(InvalidToken, match="algorithm"):
        await _validator(jwks.url).validate(f"{header}.{payload}.")
    assert jwks.requests == 0  # refused on its header, before any key was looked up


async def test_hs256_signed_with_the_public_key_is_refused(
    jwks: JwksServer, rsa_key: rsa.RSAPrivateKey
) -> None:
    # The key-confusion forgery: HMAC keyed with the issuer's public key, which anyone can read.
    jwks.keys = [_rsa_jwk(rsa_key, "rsa-1")]
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    header = _b64(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    payload = _b64(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 60}).encode()
    )
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="algorithm"):
        await _validator(jwks.url).validate(f"{header}.{payload}.{_b64(signature)}")


async def test_hs256_is_refused_even_with_a_symmetric_key_in_the_jwks(
    jwks: JwksServer,
) -> None:
    secret = b"shared-secret-of-thirty-two-bytes!!"
    jwks.keys = [{"kty": "oct", "kid": "oct-1", "k": _b64(secret)}]
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 60}
    token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "oct-1"})
    with pytest.raises(InvalidToken):
        await _validator(jwks.url, algorithms=frozenset({"ES256"})).validate(token)


async def test_an_expired_token_is_refused_beyond_the_leeway(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    validator = _validator(jwks.url)
    # Expired 5 s ago: within the 30 s leeway for clock skew, still accepted.
    recent = _token(ec_key, now=time.time() - 305, ttl=300)
    assert (await validator.validate(recent)).subject == "alice"
    expired = _token(ec_key, now=time.time() - 400, ttl=300)
    with pytest.raises(InvalidToken, match="expired"):
        await validator.validate(expired)


async def test_a_token_not_yet_valid_is_refused(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    future = _token(ec_key, now=time.time() + 120)
    with pytest.raises(InvalidToken, match="not valid yet"):
        await _validator(jwks.url).validate(future)


async def test_a_token_from_another_issuer_is_refused(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    token = mint_token(ec_key, issuer="http://127.0.0.1:1/other", subject="alice")
    with pytest.raises(InvalidToken, match="another issuer"):
        await _validator(jwks.url).validate(token)


async def test_a_token_for_another_audience_is_refused(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    token = _token(ec_key, audience="billing-api")
    with pytest.raises(InvalidToken, match="audience"):
        await _validator(jwks.url).validate(token)


async def test_a_tampered_payload_is_refused(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    header, payload, signature = _token(ec_key).split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "mallory"
    forged = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="signature"):
        await _validator(jwks.url).validate(forged)


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30", "", "ünïcode.x.y"],
    ids=["word", "three-garbage-segments", "two-segments", "empty", "non-ascii"],
)
async def test_a_token_that_is_not_a_jwt_is_refused(jwks: JwksServer, token: str) -> None:
    with pytest.raises(InvalidToken):
        await _validator(jwks.url).validate(token)
    assert jwks.requests == 0


async def test_an_oversized_token_is_refused_before_it_is_parsed(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    header = {"alg": "ES256", "kid": public_jwk(ec_key)["kid"], "x": "A" * 10_000}
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 60}
    token = jwt.encode(claims, ec_key, algorithm="ES256", headers=header)
    with pytest.raises(InvalidToken, match="longer than"):
        await _validator(jwks.url).validate(token)
    assert jwks.requests == 0


async def test_an_unknown_kid_is_refused_and_refetches_at_most_once_per_interval(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    clock = FakeClock()
    validator = _validator(jwks.url, clock)
    await validator.validate(_token(ec_key))
    assert jwks.requests == 1
    clock.now += 10.5  # past the interval since that first fetch
    rotated = ec.generate_private_key(ec.SECP256R1())
    # Not published: refused; the first unknown kid refetches, the next ones within the
    # interval do not (made-up kids must not become requests to the identity provider).
    for _ in range(3):
        with pytest.raises(InvalidToken, match="does not publish"):
            await validator.validate(_token(rotated))
    assert jwks.requests == 2
    # The issuer rotates to the new key; within the interval it is not seen yet ...
    jwks.keys = [public_jwk(ec_key), public_jwk(rotated)]
    with pytest.raises(InvalidToken):
        await validator.validate(_token(rotated))
    assert jwks.requests == 2
    # ... after it, the unknown kid refreshes the set once and the token is accepted.
    clock.now += 10.5
    assert (await validator.validate(_token(rotated))).subject == "alice"
    assert (await validator.validate(_token(ec_key))).subject == "alice"
    assert jwks.requests == 3


async def test_the_jwks_down_is_503_for_an_uncached_kid_and_never_an_accept(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    validator = _validator(jwks.url)
    jwks.stop()
    with pytest.raises(KeysUnavailable) as refused:
        await validator.validate(_token(ec_key))
    assert refused.value.status == 503
    assert "Retry-After" in refused.value.headers()
    # Within the refresh interval the outage is remembered, not retried on every request.
    with pytest.raises(KeysUnavailable):
        await validator.validate(_token(ec_key))
    assert validator.keys.fetches == 1


async def test_cached_keys_outlive_a_jwks_outage(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    clock = FakeClock()
    validator = _validator(jwks.url, clock)
    await validator.validate(_token(ec_key))
    jwks.stop()
    clock.now += 601  # the cached set is due for a re-read, which fails
    assert (await validator.validate(_token(ec_key))).subject == "alice"
    # A key it never had is still a 503, not an accept and not a verdict on the token.
    with pytest.raises(KeysUnavailable):
        await validator.validate(_token(ec.generate_private_key(ec.SECP256R1())))


async def test_a_key_withdrawn_from_the_jwks_stops_working_after_the_max_age(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    clock = FakeClock()
    validator = _validator(jwks.url, clock)
    await validator.validate(_token(ec_key))
    jwks.keys = []
    clock.now += 601
    with pytest.raises(InvalidToken, match="does not publish"):
        await validator.validate(_token(ec_key))


async def test_a_token_without_a_subject_is_refused(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 60}
    token = jwt.encode(
        claims, ec_key, algorithm="ES256", headers={"kid": public_jwk(ec_key)["kid"]}
    )
    with pytest.raises(InvalidToken, match="required claim"):
        await _validator(jwks.url).validate(token)


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], ["RS256", "HS512"], []])
def test_settings_refuse_symmetric_and_none_algorithms(algorithms: list[str]) -> None:
    with pytest.raises(ValueError, match="AUTH_ALGORITHMS"):
        AuthSettings(algorithms=frozenset(algorithms))


def test_production_refuses_the_development_issuer_and_plain_http() -> None:
    with pytest.raises(ValueError, match="development issuer"):
        AuthSettings(environment="production")
    with pytest.raises(ValueError, match="https"):
        AuthSettings(
            environment="production",
            issuer="http://idp.example/realms/outbox",
            jwks_url="http://idp.example/realms/outbox/protocol/openid-connect/certs",
        )
    ok = AuthSettings(
        environment="production",
        issuer="https://idp.example/realms/outbox",
        jwks_url="https://idp.example/realms/outbox/protocol/openid-connect/certs",
    )
    assert ok.effective_jwks_url.startswith("https://")


def test_settings_read_the_auth_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_ISSUER", "https://idp.example/realms/outbox")
    monkeypatch.setenv("AUTH_AUDIENCE", "orders")
    monkeypatch.setenv("AUTH_JWKS_URL", "https://idp.example/certs")
    monkeypatch.setenv("AUTH_ALGORITHMS", '["PS256"]')
    settings = AuthSettings()
    assert (settings.issuer, settings.audience) == ("https://idp.example/realms/outbox", "orders")
    assert settings.effective_jwks_url == "https://idp.example/certs"
    assert settings.algorithms == frozenset({"PS256"})


async def test_concurrent_requests_for_an_uncached_key_share_one_fetch(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.keys = [public_jwk(ec_key)]
    validator = _validator(jwks.url)
    tokens = [_token(ec_key) for _ in range(20)]
    principals = await asyncio.gather(*(validator.validate(t) for t in tokens))
    assert {p.subject for p in principals} == {"alice"}
    assert jwks.requests == 1


def test_only_signing_keys_of_allowed_algorithms_are_taken_from_a_jwks(
    ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Keycloak's JWKS holds an encryption key (RSA-OAEP, use: enc) beside its signing key.
    signing = _rsa_jwk(rsa_key, "sig-1")
    document = {
        "keys": [
            signing,
            _rsa_jwk(rsa_key, "enc-1") | {"use": "enc", "alg": "RSA-OAEP"},
            {"kty": "oct", "kid": "oct-1", "k": _b64(b"x" * 32)},
            public_jwk(ec_key) | {"kid": "ps-1", "alg": "ES512"},
            {"kty": "RSA", "n": signing["n"], "e": signing["e"]},  # no kid
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not an object",
        ]
    }
    assert set(parse_jwks(document, {"RS256", "ES256"})) == {"sig-1"}
    with pytest.raises(JwksFetchError):
        parse_jwks({"no": "keys"}, {"RS256"})


async def test_a_jwks_url_answering_something_else_is_a_503_not_an_accept(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    server = JwksServer()
    try:
        # An HTML error page with status 200, as a misrouted proxy may answer.
        server.body = b"<html>gateway</html>"
        validator = _validator(server.url)
        with pytest.raises(KeysUnavailable):
            await validator.validate(_token(ec_key))
    finally:
        server.stop()
