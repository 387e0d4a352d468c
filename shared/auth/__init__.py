"""Bearer tokens of the order API: who the caller is (issue 23).

:class:`TokenValidator` checks a JWT against :class:`AuthSettings` (issuer, audience, asymmetric
algorithms, dates) with keys from the issuer's JWKS (:class:`JwksKeys`, cached, refreshed on an
unknown ``kid`` at most once per interval); :data:`PrincipalDep` is the FastAPI dependency and
:func:`install_bearer_auth` the wiring (both in :mod:`shared.auth.dependency`, not imported
here: the stack's command line reads these settings and must not load FastAPI). Refusals are
:class:`AuthError` subclasses, each with its RFC 6750 status and challenge.
"""

from shared.auth.errors import (
    AuthError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    KeysUnavailable,
    MissingToken,
)
from shared.auth.keys import JwksKeys
from shared.auth.settings import ASYMMETRIC_ALGORITHMS, ORDER_API_AUDIENCE, AuthSettings
from shared.auth.tokens import MAX_TOKEN_CHARS, SUPPORT_ROLE, Principal, TokenValidator

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_TOKEN_CHARS",
    "ORDER_API_AUDIENCE",
    "SUPPORT_ROLE",
    "AuthError",
    "AuthSettings",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "JwksKeys",
    "KeysUnavailable",
    "MissingToken",
    "Principal",
    "TokenValidator",
]
