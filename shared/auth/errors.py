"""Why a request's bearer token was refused, as RFC 6750 names it.

Each error knows its HTTP status and its ``WWW-Authenticate`` challenge. Descriptions are fixed
texts chosen here: never the token, a claim's value or the library's message (which may quote
either), so nothing secret reaches a response body or a log line through them.
"""

from __future__ import annotations

from typing import ClassVar


class AuthError(Exception):
    """A request refused for its credentials (or for the identity provider being away)."""

    status: ClassVar[int] = 401
    # RFC 6750 section 3.1 code; None: no credentials were sent, so no error is named.
    error: ClassVar[str | None] = "invalid_token"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @property
    def code(self) -> str:
        """The error code of the response body."""
        return self.error or "unauthorized"

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate`` (RFC 6750 section 3), and what else the status calls for."""
        if self.error is None:
            return {"WWW-Authenticate": "Bearer"}
        # The description is one of our fixed ASCII texts without quotes (see __init__ callers).
        return {
            "WWW-Authenticate": (
                f'Bearer error="{self.error}", error_description="{self.description}"'
            )
        }


class MissingToken(AuthError):
    """No bearer credentials at all: RFC 6750 section 3.1 asks for a bare challenge, no code."""

    error = None


class InvalidRequest(AuthError):
    """The request itself is malformed: two Authorization headers, ``Bearer`` without a token.

    RFC 6750 says 400 for ``invalid_request``: retrying with a fresh token would not help.
    """

    status = 400
    error = "invalid_request"


class InvalidToken(AuthError):
    """Expired, not yet valid, wrongly signed, for another issuer or audience, not a JWT."""


class InsufficientScope(AuthError):
    """A valid token without the scope or role an operation needs."""

    status = 403
    error = "insufficient_scope"


class KeysUnavailable(AuthError):
    """The token names a key not cached and the issuer's JWKS cannot be read now.

    Not the client's fault and not a verdict on the token: 503 with ``Retry-After``, never an
    accept and never a 500.
    """

    status = 503
    error = None

    def __init__(self, description: str, retry_after_seconds: int = 1) -> None:
        super().__init__(description)
        self.retry_after_seconds = max(1, retry_after_seconds)

    @property
    def code(self) -> str:
        return "service_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}
