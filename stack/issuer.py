"""The embedded stack's development issuer: one signing key, its JWKS over HTTP, and tokens.

``python -m stack.issuer --port 8090 --issuer http://127.0.0.1:8090 --key .stack/conf/...pem``
serves ``/.well-known/openid-configuration`` and ``/jwks.json`` on loopback, which is all a
resource server reads from a real identity provider; ``python -m stack token USER`` signs tokens
with the same key (:func:`mint_token`). The key is an EC P-256 pair (ES256: small, fast to make)
generated once per stack root, private half mode 0600, so tokens survive restarts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from base64 import urlsafe_b64encode
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.auth.settings import DEV_JWKS_PATH, ORDER_API_AUDIENCE

if TYPE_CHECKING:
    from stack.config import StackConfig

log = logging.getLogger("stack.issuer")

ALGORITHM: Final = "ES256"
OPENID_CONFIGURATION_PATH: Final = "/.well-known/openid-configuration"
# What a dev token may do: the scope the order API's routes will ask for.
DEFAULT_SCOPES: Final = ("orders",)


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The issuer's private key from ``path`` (PEM), generated there (mode 0600) if absent.

    Written to a temporary file and hard-linked into place, so two processes racing to create
    it (the issuer and ``stack token``) both end up with the one that won, never half a file.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            # FileExistsError: another process won the race; its key is the one used.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return loaded


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The public half as a JWK with ``kid`` (its RFC 7638 thumbprint), ``use`` and ``alg``."""
    jwk: dict[str, str] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, sort_keys=True, separators=(",", ":")).encode()
    kid = urlsafe_b64encode(hashlib.sha256(canonical).digest()).decode().rstrip("=")
    return {**required, "kid": kid, "use": "sig", "alg": ALGORITHM}


def jwks_document(keys: Iterable[ec.EllipticCurvePrivateKey]) -> dict[str, Any]:
    return {"keys": [public_jwk(key) for key in keys]}


def openid_configuration(issuer: str) -> dict[str, Any]:
    """The discovery document's fields a resource server reads."""
    return {
        "issuer": issuer,
        "jwks_uri": issuer.rstrip("/") + DEV_JWKS_PATH,
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "subject_types_supported": ["public"],
        "response_types_supported": ["token"],
    }


def mint_token(
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: str,
    subject: str,
    audience: str = ORDER_API_AUDIENCE,
    ttl_seconds: int = 3600,
    scopes: Iterable[str] = DEFAULT_SCOPES,
    roles: Iterable[str] = (),
    now: float | None = None,
) -> str:
    """An access token for ``subject``, signed with ``key``, valid from now for ``ttl_seconds``;
    ``roles`` go where Keycloak puts realm roles (``realm_access.roles``)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "preferred_username": subject,
        "scope": " ".join(scopes),
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    if roles := sorted(set(roles)):
        claims["realm_access"] = {"roles": roles}
    headers = {"kid": public_jwk(key)["kid"], "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)


def bearer_header(token: str) -> dict[str, str]:
    """The request header that carries ``token`` (RFC 6750)."""
    return {"Authorization": f"Bearer {token}"}


def token_subject(token: str) -> str:
    """The ``sub`` of a token this process was just given (read, not verified: for the caller
    to know whom it acts as, never to decide access)."""
    subject = jwt.decode(token, options={"verify_signature": False}).get("sub")
    if not isinstance(subject, str) or not subject:
        raise ValueError("the token names no subject")
    return subject


class UserTokens:
    """One token per user from a stack's development issuer, minted on first use and kept.

    For callers that time requests (the bench, the chaos load, the demo): they mint every user's
    token before the clock starts (:meth:`mint`) and only look tokens up while it runs. A kept
    token is minted again only when less than :data:`REMINT_MARGIN_SECONDS` of its life is left,
    so a run longer than ``ttl_seconds`` keeps working.
    """

    # Well over the API's leeway (30 s): a token handed out is never about to be refused.
    REMINT_MARGIN_SECONDS: Final = 120

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        *,
        ttl_seconds: int = 3600,
        roles: Iterable[str] = (),
    ) -> None:
        if ttl_seconds <= self.REMINT_MARGIN_SECONDS:
            raise ValueError(f"ttl_seconds must exceed {self.REMINT_MARGIN_SECONDS}")
        self._key = key
        self.issuer = issuer
        self.ttl_seconds = ttl_seconds
        self.roles = tuple(roles)
        self._kept: dict[str, tuple[str, float]] = {}

    @classmethod
    def for_stack(cls, config: StackConfig, *, ttl_seconds: int = 3600) -> UserTokens:
        """Tokens the order API of the stack ``config`` describes accepts (its development
        issuer; the key is made if the issuer has not started yet, and it will serve that one)."""
        return cls(
            load_or_create_key(config.issuer_key_path), config.issuer_url, ttl_seconds=ttl_seconds
        )

    def mint(self, users: Iterable[str]) -> None:
        """Mint (and keep) the token of every one of ``users`` now."""
        for user in users:
            self.token(user)

    def token(self, user: str) -> str:
        """``user``'s bearer token (``sub`` = ``user``)."""
        kept = self._kept.get(user)
        if kept is not None and kept[1] - time.time() > self.REMINT_MARGIN_SECONDS:
            return kept[0]
        now = time.time()
        token = mint_token(
            self._key,
            issuer=self.issuer,
            subject=user,
            ttl_seconds=self.ttl_seconds,
            roles=self.roles,
            now=now,
        )
        self._kept[user] = (token, int(now) + self.ttl_seconds)
        return token

    def headers(self, user: str) -> dict[str, str]:
        """The ``Authorization`` header of ``user``'s requests."""
        return bearer_header(self.token(user))


def _handler(documents: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = documents.get(self.path.split("?", 1)[0])
            if body is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=300")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return Handler


def serve(host: str, port: int, issuer: str, key_path: Path) -> None:
    """Serve the discovery document and the JWKS until SIGTERM/SIGINT."""
    key = load_or_create_key(key_path)
    documents = {
        OPENID_CONFIGURATION_PATH: json.dumps(openid_configuration(issuer)).encode(),
        DEV_JWKS_PATH: json.dumps(jwks_document([key])).encode(),
    }
    server = ThreadingHTTPServer((host, port), _handler(documents))

    def _stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("development issuer %s: JWKS on http://%s:%d%s", issuer, host, port, DEV_JWKS_PATH)
    server.serve_forever()
    server.server_close()
    log.info("development issuer stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stack.issuer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--issuer", required=True, help="the iss of its tokens (its own URL)")
    parser.add_argument("--key", type=Path, required=True, help="private key (PEM, made if absent)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(args.host, args.port, args.issuer, args.key)


if __name__ == "__main__":
    main()
