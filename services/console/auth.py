"""Who may use the console: a Bearer token for scripts, a signed session cookie for browsers,
and a CSRF token on every form a cookie-signed-in browser posts.

Nothing is stored server-side: the session cookie is ``<issued>.<nonce>.<mac>`` with an HMAC
keyed by ``CONSOLE_TOKEN``, so changing the token signs everybody out. The CSRF token of a
session is an HMAC of its nonce under the same key: a page of another site can make the browser
send the cookie, but cannot read a page of ours to learn the token (SameSite=Strict refuses the
cookie to such requests as a second line).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "console_session"
CSRF_FIELD = "csrf"


def _same(candidate: str, expected: bytes) -> bool:
    """Constant-time equality of untrusted text and a secret, for any text. On two ``str``
    ``hmac.compare_digest`` raises TypeError for non-ASCII (a 500 for ``Cookie: ...=1.a.\u00e9``):
    compare bytes. surrogatepass: no text, even one with a lone surrogate, fails to encode."""
    return hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), expected)


@dataclass(frozen=True)
class Session:
    nonce: str
    # "bearer": a script; its requests carry the token itself and need no CSRF token.
    kind: str


class Keys:
    def __init__(self, token: str, session_seconds: float) -> None:
        self._token = token.encode()
        self._session_seconds = session_seconds

    def _mac(self, purpose: str, message: str) -> str:
        return hmac.new(self._token, f"{purpose}:{message}".encode(), hashlib.sha256).hexdigest()

    def bearer_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return _same(header[len("Bearer ") :], self._token)

    def token_ok(self, candidate: str) -> bool:
        return _same(candidate, self._token)

    def new_session(self) -> str:
        issued, nonce = str(int(time.time())), secrets.token_urlsafe(16)
        return f"{issued}.{nonce}.{self._mac('session', f'{issued}.{nonce}')}"

    def session(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 2:
            return None
        issued, nonce, mac = cookie.split(".")
        if not _same(mac, self._mac("session", f"{issued}.{nonce}").encode()):
            return None
        # isascii(): "\u00b2" (superscript two) is str.isdigit() and int() raises on it.
        if not (issued.isascii() and issued.isdigit()):
            return None
        if time.time() - int(issued) > self._session_seconds:
            return None
        return Session(nonce, "cookie")

    def csrf_for(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        if session.kind == "bearer":
            return True
        return candidate is not None and _same(candidate, self.csrf_for(session).encode())
