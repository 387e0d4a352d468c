"""A JWKS served by a real HTTP server on loopback, and a clock tests move by hand: for the
bearer-token tests (test_auth_*.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The issuer the bearer-token tests sign with: a loopback address nothing listens on, since
# the validator only compares it (the keys come from the JwksServer's own URL).
ISSUER = "http://127.0.0.1:1/test-issuer"


class JwksServer:
    """A JWKS on a real loopback HTTP server; ``keys`` may change, ``stop()`` takes it down."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        # Set to answer these bytes instead of the key set.
        self.body: bytes | None = None
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = owner.body or json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
