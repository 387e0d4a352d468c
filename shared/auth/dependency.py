"""The FastAPI side: the ``Authorization`` header read strictly, the OpenAPI scheme, the errors.

Wiring, in an app's factory::

    install_bearer_auth(app, TokenValidator(AuthSettings()), render=error_response)

and on each protected route a ``principal: PrincipalDep`` parameter. Routes without it (health,
metrics, the OpenAPI document) stay open. The dependency declares :data:`bearer_scheme`, so the
OpenAPI document names the scheme on exactly the routes that use it (Swagger UI's Authorize
button); the header itself is parsed here, not by ``HTTPBearer``, which reads only the first of
two ``Authorization`` headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Final

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.auth.errors import AuthError, InvalidRequest, MissingToken
from shared.auth.tokens import MAX_TOKEN_CHARS, Principal, TokenValidator

# Renders a refusal: (status, error code, message, headers) -> response. The order API passes its
# own error format; the default is the same shape ({"error", "message", "fields"}).
Render = Callable[[int, str, str, Mapping[str, str]], Response]

bearer_scheme: Final = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="An access token from the identity provider (`python -m stack token USER` on "
    "the embedded stack): `Authorization: Bearer <token>`.",
    auto_error=False,
)

_STATE_ATTRIBUTE: Final = "token_validator"


def bearer_token(authorization: list[str]) -> str:
    """The token of the request's ``Authorization`` header values (all of them, in order).

    RFC 6750: none, or another scheme (``Basic``) -> :class:`MissingToken`; two headers, or
    ``Bearer`` without exactly one token -> :class:`InvalidRequest`.
    """
    if len(authorization) > 1:
        raise InvalidRequest("more than one Authorization header")
    if not authorization:
        raise MissingToken("a bearer token is required: Authorization: Bearer <token>")
    value = authorization[0]
    if len(value) > MAX_TOKEN_CHARS + 64:  # before split(): no work on a megabyte of header
        raise InvalidRequest("the Authorization header is too long")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("a bearer token is required: Authorization: Bearer <token>")
    token = token.strip()
    if not token or " " in token:
        raise InvalidRequest("Authorization: Bearer must be followed by exactly one token")
    return token


async def current_principal(
    request: Request,
    # Declares the scheme in the OpenAPI document; its value is ignored (see module docstring).
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The caller, from a valid bearer token; an :class:`AuthError` otherwise (rendered by the
    handler :func:`install_bearer_auth` registers)."""
    validator: TokenValidator | None = getattr(request.app.state, _STATE_ATTRIBUTE, None)
    if validator is None:
        raise RuntimeError("install_bearer_auth(app, ...) was not called for this app")
    token = bearer_token(request.headers.getlist("authorization"))
    return await validator.validate(token)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def default_render(status: int, error: str, message: str, headers: Mapping[str, str]) -> Response:
    return JSONResponse(
        {"error": error, "message": message, "fields": []}, status_code=status, headers=headers
    )


def install_bearer_auth(
    app: FastAPI, validator: TokenValidator, render: Render = default_render
) -> None:
    """Make ``validator`` the app's and answer every :class:`AuthError` with its status and
    ``WWW-Authenticate`` challenge (bodies carry the fixed description, never the token).
    The app's lifespan should ``await validator.aclose()`` at shutdown."""
    setattr(app.state, _STATE_ATTRIBUTE, validator)

    async def _refused(request: Request, error: Exception) -> Response:
        assert isinstance(error, AuthError)
        return render(error.status, error.code, error.description, error.headers())

    app.add_exception_handler(AuthError, _refused)
