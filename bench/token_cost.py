"""What the order API's bearer-token check costs per request: CPU per
:meth:`TokenValidator.validate` call with the signing key already cached.

Measured in the bench's own process, in a short loop before the order API phase's measured
windows (it would otherwise take CPU from the load it sits beside), for the two algorithms a
token may come with: ES256, the stack's development issuer's (what the API phase's requests
carry), with the validator configured as the stack configures the order API (``auth_env``, its
keys fetched once from the running issuer); and RS256, Keycloak's, with a 2048-bit key served
to the validator in-process. The figure is CPU time (``time.process_time``) over the calls, so
other processes on the machine do not inflate it; wall time is given beside it.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth import AuthSettings, JwksKeys, TokenValidator
from stack.config import StackConfig
from stack.issuer import UserTokens

# ~0.1-0.3 s of CPU per algorithm on this machine: enough calls that the per-call figure is
# stable to a microsecond, few enough to stay out of the way.
CALLS: Final = 2000
# Calls before the timed loop: PyJWT's and cryptography's first-use costs are not per request.
WARM_UP_CALLS: Final = 50
_RSA_KID: Final = "bench-rs256"
_RSA_ISSUER: Final = "https://issuer.bench.invalid/realms/outbox"
_RSA_JWKS_URL: Final = _RSA_ISSUER + "/protocol/openid-connect/certs"


async def _per_call(validator: TokenValidator, token: str, calls: int) -> dict[str, Any]:
    for _ in range(WARM_UP_CALLS):  # also fetches and caches the key
        await validator.validate(token)
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await validator.validate(token)
    cpu = time.process_time() - cpu_started
    wall = time.perf_counter() - wall_started
    return {
        "cpu_us_per_call": round(cpu / calls * 1e6, 1),
        "wall_us_per_call": round(wall / calls * 1e6, 1),
        "calls": calls,
    }


async def es256_of_the_stack(config: StackConfig, calls: int = CALLS) -> dict[str, Any]:
    """The development issuer's tokens, validated as the stack's order API validates them."""
    env = config.auth_env()
    settings = AuthSettings(
        issuer=env["AUTH_ISSUER"], audience=env["AUTH_AUDIENCE"], jwks_url=env["AUTH_JWKS_URL"]
    )
    validator = TokenValidator(settings)
    token = UserTokens.for_stack(config).token("bench-token-cost")
    try:
        return {"algorithm": "ES256", **await _per_call(validator, token, calls)}
    finally:
        await validator.aclose()


async def rs256_of_keycloaks_size(calls: int = CALLS) -> dict[str, Any]:
    """A token signed RS256 with a 2048-bit key, as Keycloak signs by default, its JWKS served
    to the validator in-process (no identity provider needed)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    document = {"keys": [{**jwk, "kid": _RSA_KID, "use": "sig", "alg": "RS256"}]}
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, json=document))
    )
    settings = AuthSettings(issuer=_RSA_ISSUER, audience="order-api", jwks_url=_RSA_JWKS_URL)
    keys = JwksKeys(
        _RSA_JWKS_URL,
        algorithms=settings.algorithms,
        min_refresh_seconds=settings.jwks_min_refresh_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        timeout_seconds=settings.jwks_timeout_seconds,
        client=client,
    )
    validator = TokenValidator(settings, keys)
    now = int(time.time())
    claims = {"iss": _RSA_ISSUER, "aud": settings.audience, "sub": "bench", "iat": now}
    token = jwt.encode(
        {**claims, "exp": now + 3600}, key, algorithm="RS256", headers={"kid": _RSA_KID}
    )
    try:
        return {"algorithm": "RS256", **await _per_call(validator, token, calls)}
    finally:
        await validator.aclose()


async def measure(config: StackConfig, calls: int = CALLS) -> dict[str, Any]:
    """``{"ES256": {...}, "RS256": {...}}``: CPU and wall µs per validate call, key cached."""
    es256 = await es256_of_the_stack(config, calls)
    rs256 = await rs256_of_keycloaks_size(calls)
    return {"ES256": es256, "RS256": rs256}
