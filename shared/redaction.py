"""Keep credentials out of everything a process prints: logs, errors, readiness bodies.

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


def redact(text: str) -> str:
    """``text`` with the password of every URI and every secret query parameter masked.

    The user name and host stay visible (``mongodb://admin:***@db:27017``): they are what an
    operator needs to recognise which server and account a message is about. Idempotent, and
    text without credentials is returned unchanged.
    """
    if "://" not in text and "=" not in text:
        return text  # the common case: nothing that could hold a credential
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


__all__ = ["MASK", "redact"]
