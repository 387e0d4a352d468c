"""The FastAPI dependency of shared.auth on a tiny app: what a client sees for each refusal
(status, WWW-Authenticate, body without the token), and the OpenAPI scheme.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from shared.auth import AuthSettings, TokenValidator
from shared.auth.dependency import PrincipalDep, install_bearer_auth
from stack.issuer import mint_token, public_jwk
from tests.unit.shared.jwks_server import ISSUER, JwksServer

pytestmark = pytest.mark.unit


@pytest.fixture
async def client(
    jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[httpx.AsyncClient]:
    jwks.keys = [public_jwk(ec_key)]
    app = FastAPI()
    validator = TokenValidator(AuthSettings(issuer=ISSUER, jwks_url=jwks.url))
    install_bearer_auth(app, validator)

    @app.get("/whoami")
    async def whoami(principal: PrincipalDep) -> dict[str, str]:
        return {"sub": principal.subject}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http
    await validator.aclose()


def _bearer(ec_key: ec.EllipticCurvePrivateKey, subject: str = "alice") -> str:
    return f"Bearer {mint_token(ec_key, issuer=ISSUER, subject=subject)}"


async def test_a_valid_token_reaches_the_route_as_its_subject(
    client: httpx.AsyncClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    response = await client.get("/whoami", headers={"Authorization": _bearer(ec_key)})
    assert response.status_code == 200
    assert response.json() == {"sub": "alice"}
    token = mint_token(ec_key, issuer=ISSUER, subject="alice")
    lowercase = await client.get("/whoami", headers={"Authorization": f"bearer {token}"})
    assert lowercase.status_code == 200  # the scheme name is case-insensitive (RFC 7235)


@pytest.mark.parametrize("authorization", [None, "Basic YWxpY2U6czNjcmV0"], ids=["none", "basic"])
async def test_no_bearer_token_is_401_with_a_bare_challenge(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/whoami", headers=headers)
    assert response.status_code == 401
    # RFC 6750 3.1: no credentials sent, so no error code in the challenge.
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"] == "unauthorized"


async def test_a_bad_token_is_401_invalid_token_and_the_body_never_echoes_it(
    client: httpx.AsyncClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    token = mint_token(ec_key, issuer="http://127.0.0.1:1/other", subject="alice")
    response = await client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert response.json()["error"] == "invalid_token"
    for part in token.split("."):
        assert part not in response.text
        assert part not in challenge


async def test_two_authorization_headers_are_refused(
    client: httpx.AsyncClient, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    # Two valid tokens for two users: which one would count? Neither.
    headers = [
        ("Authorization", _bearer(ec_key, "alice")),
        ("Authorization", _bearer(ec_key, "bob")),
    ]
    response = await client.get("/whoami", headers=headers)
    assert response.status_code == 400
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Bearer a b", "Bearer " + "A" * 20_000],
    ids=["no-token", "blank-token", "two-tokens", "oversized-header"],
)
async def test_a_malformed_authorization_header_is_refused(
    client: httpx.AsyncClient, authorization: str
) -> None:
    response = await client.get("/whoami", headers={"Authorization": authorization})
    assert response.status_code == 400
    assert response.headers["WWW-Authenticate"].startswith('Bearer error="invalid_request"')


async def test_the_jwks_down_is_503_with_retry_after_never_an_accept(
    client: httpx.AsyncClient, jwks: JwksServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    jwks.stop()
    response = await client.get("/whoami", headers={"Authorization": _bearer(ec_key)})
    assert response.status_code == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.json()["error"] == "service_unavailable"


async def test_routes_without_the_dependency_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200


async def test_the_openapi_document_declares_the_bearer_scheme_where_it_is_used(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert scheme == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": scheme["description"],
    }
    assert document["paths"]["/whoami"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in document["paths"]["/healthz"]["get"]
