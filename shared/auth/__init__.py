"""Bearer tokens of the order API: who the caller is (issue 23).

:class:`TokenValidator` checks a JWT against :class:`AuthSettings` (issuer, audience, asymmetric
algorithms, dates) with keys from the issuer's JWKS (:class:`JwksKeys`, cached, refreshed on an
unknown ``kid`` at most once per interval); :data:`PrincipalDep` is the FastAPI dependency and
:func:`install_bearer_auth` the wiring. Refusals are :class:`AuthError` subclasses, each with
its RFC 6750 status and challenge.
"""

from shared.auth.dependency import (
    PrincipalDep,
    bearer_scheme,
    bearer_token,
    current_principal,
    install_bearer_auth,
)
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
from shared.auth.tokens import MAX_TOKEN_CHARS, Principal, TokenValidator

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "MAX_TOKEN_CHARS",
    "ORDER_API_AUDIENCE",
    "AuthError",
    "AuthSettings",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "JwksKeys",
    "KeysUnavailable",
    "MissingToken",
    "Principal",
    "PrincipalDep",
    "TokenValidator",
    "bearer_scheme",
    "bearer_token",
    "current_principal",
    "install_bearer_auth",
]
