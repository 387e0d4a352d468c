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
        return hmac.compare_digest(header[len("Bearer ") :].encode(), self._token)

    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def new_session(self) -> str:
        issued, nonce = str(int(time.time())), secrets.token_urlsafe(16)
        return f"{issued}.{nonce}.{self._mac('session', f'{issued}.{nonce}')}"

    def session(self, cookie: str | None) -> Session | None:
        if not cookie or cookie.count(".") != 2:
            return None
        issued, nonce, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac("session", f"{issued}.{nonce}")):
            return None
        if not issued.isdigit() or time.time() - int(issued) > self._session_seconds:
            return None
        return Session(nonce, "cookie")

    def csrf_for(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def csrf_ok(self, session: Session, candidate: str | None) -> bool:
        if session.kind == "bearer":
            return True
        return candidate is not None and hmac.compare_digest(candidate, self.csrf_for(session))
