"""Keep credentials out of everything a process prints: logs, errors, readiness bodies.

Bearer tokens too: an ``Authorization`` header's credentials (``Bearer ...``, ``Basic ...``)
and any JWT in text (three base64url parts, the first always starting ``eyJ``, the encoding of
``{"``) are masked whole, wherever they appear (a header line, a dict of headers, a token
response).

``MONGO_URI``, ``REDIS_URL`` and any other connection URI may carry a password
(``mongodb://admin:s3cret@db``, ``redis://:s3cret@cache``, ``smtp://user:s3cret@mail``). The
services print URIs and exception texts that embed them in error messages, tracebacks and
``/readyz`` bodies; every one of those paths goes through :func:`redact`, and the JSON log
formatter applies it to every line as the last line of defence.
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"
# HTTP headers whose values are credentials: never logged, never a span attribute.
SECRET_HEADERS: Final = ("authorization", "proxy-authorization", "cookie", "set-cookie")

# scheme://user:password@host -> scheme://user:***@host, for any scheme (mongodb, mongodb+srv,
# redis, rediss, smtp, amqp ...). The password runs to the last "@" before the host: a password
# with an unescaped "@" is still masked whole. It cannot cross whitespace, "/", "?" or "#",
# which end the authority, so two URIs on one line are masked separately.
_URI_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/?#\s]*:)(?P<password>[^/?#\s]*)@"
)
# Secrets passed as query parameters (?password=..., &authMechanismProperties=AWS_SESSION_TOKEN:..).
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_?key|authMechanismProperties)=)"
    # The value ends where the parameter does; a trailing ":" "," "." or ")" is prose around it.
    r"(?P<value>[^&;#\s'\"]*?)(?=[:,.)]?(?:[&;#\s'\"]|$))",
    re.IGNORECASE,
)


# The credentials after an HTTP auth scheme name (RFC 7235 token68): at least 16 characters, so
# prose ("a bearer token is required") and challenges (`Bearer error="..."`) stay as they are.
_SCHEME_CREDENTIALS = re.compile(
    r"(?P<head>\b(?:bearer|basic)\s+)(?P<credentials>[A-Za-z0-9\-._~+/]{16,}=*)",
    re.IGNORECASE,
)
# A JWT (JWS compact form) anywhere: header.payload.signature, header starting with `eyJ`.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Cheap pre-check: no text without one of these can hold a token.
_TOKEN_HINT = re.compile(r"eyJ|bearer|basic", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every URI and every secret query parameter masked.

    The user name and host stay visible (``mongodb://admin:***@db:27017``): they are what an
    operator needs to recognise which server and account a message is about. Bearer and Basic
    credentials and JWTs are masked whole (``Bearer ***``). Idempotent, and text without
    credentials is returned unchanged.
    """
    if _TOKEN_HINT.search(text):
        text = _JWT.sub(MASK, text)
        text = _SCHEME_CREDENTIALS.sub(lambda m: f"{m['head']}{MASK}", text)
    if "://" not in text and "=" not in text:
        return text  # the common case: nothing that could hold a credential
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


__all__ = ["MASK", "SECRET_HEADERS", "redact"]
