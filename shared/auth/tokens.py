"""Bearer-token validation: a JWT from the configured issuer, for our audience, in date.

PyJWT does the cryptography and the registered-claim checks; this module decides what is asked
of it and what comes out: an allow-list of asymmetric algorithms checked on the header before any
key is looked up, the key chosen by ``kid`` from the issuer's JWKS (:mod:`shared.auth.keys`),
``iss``/``aud``/``exp``/``sub`` required and ``nbf``/``iat`` checked when present, all with a
small leeway. Every refusal is an :class:`~shared.auth.errors.AuthError` with a fixed description.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import jwt

from shared.auth.errors import InvalidToken
from shared.auth.keys import JwksKeys
from shared.auth.settings import AuthSettings

# Keycloak's access tokens are 1-2 KB; 8 KB leaves room for many roles. Longer is refused
# before it is parsed (base64 and JSON of an attacker's megabyte are work we do not owe).
MAX_TOKEN_CHARS: Final = 8192
_MAX_KID_CHARS: Final = 256
# The role of support staff, who may read every customer's orders: a realm role of
# stack/keycloak/realm-outbox.json, and `python -m stack token --role order-support USER`.
SUPPORT_ROLE: Final = "order-support"


@dataclass(frozen=True)
class Principal:
    """Who a valid token speaks for. ``subject`` (``sub``) is the identity orders belong to."""

    subject: str
    issuer: str
    expires_at: datetime
    scopes: frozenset[str] = frozenset()
    # Keycloak's realm roles (``realm_access.roles``) and the audience client's roles.
    roles: frozenset[str] = frozenset()
    # ``preferred_username`` when the issuer sends one: for display and logs, never for access.
    username: str | None = None

    def has_scope_or_role(self, name: str) -> bool:
        return name in self.scopes or name in self.roles


class TokenValidator:
    """Validates bearer tokens against :class:`AuthSettings` with keys from :class:`JwksKeys`."""

    def __init__(self, settings: AuthSettings, keys: JwksKeys | None = None) -> None:
        self.settings = settings
        self.keys = keys or JwksKeys(
            settings.effective_jwks_url,
            algorithms=settings.algorithms,
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
            max_age_seconds=settings.jwks_max_age_seconds,
            timeout_seconds=settings.jwks_timeout_seconds,
        )
        self._algorithms = sorted(settings.algorithms)

    async def validate(self, token: str) -> Principal:
        """The principal of ``token``; :class:`InvalidToken` for any fault of the token,
        :class:`KeysUnavailable` when its key is not cached and the JWKS cannot be read."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidToken(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        if not token.isascii():
            raise InvalidToken("the token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a JWT") from None
        # Checked before any key is fetched: `none` and HS* never get as far as a key.
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.settings.algorithms:
            raise InvalidToken("the token's signature algorithm is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not 0 < len(kid) <= _MAX_KID_CHARS:
            raise InvalidToken("the token names no signing key (kid)")
        key = await self.keys.key_for(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=self._algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the token is from another issuer") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the token is not meant for this API (audience)") from None
        except jwt.MissingRequiredClaimError:
            raise InvalidToken("the token lacks a required claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise InvalidToken("the token is malformed") from None
        return _principal(claims, self.settings.audience)

    async def aclose(self) -> None:
        await self.keys.aclose()


def _principal(claims: dict[str, Any], audience: str) -> Principal:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("the token's subject is empty")
    scope = claims.get("scope")
    scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
    username = claims.get("preferred_username")
    return Principal(
        subject=subject,
        issuer=str(claims["iss"]),
        expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        scopes=scopes,
        roles=_roles(claims, audience),
        username=username if isinstance(username, str) else None,
    )


def _roles(claims: dict[str, Any], audience: str) -> frozenset[str]:
    """Keycloak's ``realm_access.roles`` and ``resource_access.<audience>.roles``."""
    found: set[str] = set()
    realm = claims.get("realm_access")
    resource = claims.get("resource_access")
    client = resource.get(audience) if isinstance(resource, dict) else None
    for holder in (realm, client):
        roles = holder.get("roles") if isinstance(holder, dict) else None
        if isinstance(roles, list):
            found.update(r for r in roles if isinstance(r, str))
    return frozenset(found)
