"""Where the order API's bearer tokens come from: the issuer, the audience and its JWKS.

Defaults point at the embedded stack's development issuer (``python -m stack up`` starts it on
127.0.0.1:8090); a real deployment names its identity provider with ``AUTH_ISSUER``,
``AUTH_AUDIENCE`` and ``AUTH_JWKS_URL`` (production refuses the defaults and plain HTTP).
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redaction import redact

# The audience the order API accepts: the dev issuer mints it, Keycloak's realm maps it
# (stack/keycloak/realm-outbox.json) and AUTH_AUDIENCE defaults to it.
ORDER_API_AUDIENCE: Final = "order-api"
# The embedded stack's development issuer at its default port (stack/config.py DEFAULT_PORTS).
DEV_ISSUER: Final = "http://127.0.0.1:8090"
# Where the development issuer serves its keys (stack/issuer.py), relative to the issuer.
DEV_JWKS_PATH: Final = "/jwks.json"
# Asymmetric signatures only. An allow-list, so no `none` and no HS256 (an HMAC "signed" with the
# issuer's public key, which everyone has, is the classic key-confusion forgery).
ASYMMETRIC_ALGORITHMS: Final = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
_LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class AuthSettings(BaseSettings):
    """The bearer-token check of the order API (see :mod:`shared.auth`)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    environment: Literal["local", "test", "production"] = Field(
        default="local", validation_alias=_env("ENVIRONMENT")
    )
    # The exact `iss` claim accepted (Keycloak: http(s)://host/realms/<realm>).
    issuer: str = Field(default=DEV_ISSUER, validation_alias=_env("AUTH_ISSUER"))
    # The `aud` claim the token must contain.
    audience: str = Field(default=ORDER_API_AUDIENCE, validation_alias=_env("AUTH_AUDIENCE"))
    # The issuer's key set (Keycloak: <issuer>/protocol/openid-connect/certs). Unset: the
    # development issuer's path under AUTH_ISSUER.
    jwks_url: str | None = Field(default=None, validation_alias=_env("AUTH_JWKS_URL"))
    algorithms: frozenset[str] = Field(
        default=frozenset({"RS256", "ES256"}), validation_alias=_env("AUTH_ALGORITHMS")
    )
    # Clock skew tolerated on exp/nbf/iat: a few seconds between two NTP-synced hosts, never
    # minutes (a leeway is an extension of every token's life).
    leeway_seconds: float = Field(
        default=30.0, ge=0, le=120, validation_alias=_env("AUTH_LEEWAY_SECONDS")
    )
    # An unknown `kid` triggers a JWKS fetch at most this often: a stream of made-up kids must
    # not become a stream of requests to the identity provider (Keycloak's own adapters use 10 s).
    jwks_min_refresh_seconds: float = Field(
        default=10.0, gt=0, le=3600, validation_alias=_env("AUTH_JWKS_MIN_REFRESH_SECONDS")
    )
    # Known keys are re-read this often, so a key the issuer withdrew stops being accepted.
    jwks_max_age_seconds: float = Field(
        default=600.0, gt=0, le=86400, validation_alias=_env("AUTH_JWKS_MAX_AGE_SECONDS")
    )
    # The JWKS fetch's deadline: a request waiting on it waits at most this long.
    jwks_timeout_seconds: float = Field(
        default=3.0, gt=0, le=30, validation_alias=_env("AUTH_JWKS_TIMEOUT_SECONDS")
    )

    @property
    def effective_jwks_url(self) -> str:
        return self.jwks_url or self.issuer.rstrip("/") + DEV_JWKS_PATH

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> AuthSettings:
        refused = sorted(self.algorithms - ASYMMETRIC_ALGORITHMS)
        if refused or not self.algorithms:
            raise ValueError(
                f"AUTH_ALGORITHMS: only {', '.join(sorted(ASYMMETRIC_ALGORITHMS))} are "
                f"accepted, got {', '.join(refused) or 'none at all'}"
            )
        for name, url in (("AUTH_ISSUER", self.issuer), ("AUTH_JWKS_URL", self.jwks_url)):
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{name} must be an http(s) URL, got {redact(url)!r}")
            # Keys fetched over plain HTTP from another host can be swapped on the way.
            plain = parts.scheme != "https" and parts.hostname not in _LOOPBACK
            if self.environment == "production" and plain:
                raise ValueError(f"{name} must use https in production")
        if self.environment == "production" and (
            self.issuer == DEV_ISSUER or self.jwks_url is None
        ):
            raise ValueError(
                "AUTH_ISSUER and AUTH_JWKS_URL must name the identity provider in production "
                "(the defaults are the embedded stack's development issuer)"
            )
        return self
