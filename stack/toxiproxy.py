"""A small typed client for Toxiproxy's HTTP API (Shopify's TCP fault proxy).

One proxy per proxied server (``mongo``, ``kafka``, ``redis``, ``smtp``, named like the server);
a fault is a *toxic* on a proxy (latency, a black hole, a reset) or the proxy disabled (every
connection through it closed, new ones refused). The API is synchronous like the supervisor;
async tests call it through ``asyncio.to_thread``.

API reference: https://github.com/Shopify/toxiproxy#http-api (v2.12.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx

Stream = Literal["upstream", "downstream"]
# Each API call is local and small; a proxy that does not answer in 5 s is broken.
API_TIMEOUT_SECONDS = 5.0


class ToxiproxyError(RuntimeError):
    """The API refused a request; the message quotes its answer."""


@dataclass(frozen=True)
class Proxy:
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[str, ...]


class Toxiproxy:
    """Drives one Toxiproxy server (``url`` = its API, e.g. ``http://127.0.0.1:8474``)."""

    def __init__(self, url: str, timeout: float = API_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._timeout = timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(method, self.url + path, json=body, timeout=self._timeout)
        if response.status_code >= 300:
            raise ToxiproxyError(
                f"toxiproxy {method} {path}: HTTP {response.status_code} {response.text.strip()}"
            )
        return response.json() if response.content else None

    def version(self) -> str:
        return str(self._call("GET", "/version"))

    def ensure_proxies(self, routes: dict[str, tuple[str, str]]) -> None:
        """Create each ``name -> (listen, upstream)`` proxy that does not exist yet, enabled.

        Existing proxies are left alone (so are their connections): idempotent, for a
        supervisor that re-probes a running proxy.
        """
        existing = self.proxies()
        missing = [
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
            for name, (listen, upstream) in routes.items()
            if name not in existing
        ]
        if missing:
            self._call("POST", "/populate", missing)

    def proxies(self) -> dict[str, Proxy]:
        raw: dict[str, dict[str, Any]] = self._call("GET", "/proxies")
        return {name: _proxy(entry) for name, entry in raw.items()}

    def proxy(self, name: str) -> Proxy:
        return _proxy(self._call("GET", f"/proxies/{name}"))

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabling closes every connection through the proxy and refuses new ones (a cut
        link: each side sees a reset); enabling listens again."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        attributes: dict[str, int | float],
        *,
        name: str | None = None,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
    ) -> str:
        """Add a toxic (``latency``, ``timeout``, ``reset_peer``, ``bandwidth``, ...); returns
        its name (default ``<kind>_<stream>``)."""
        toxic_name = name or f"{kind}_{stream}"
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": toxic_name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        return toxic_name

    def latency(self, proxy: str, milliseconds: int, *, jitter: int = 0) -> list[str]:
        """Delay data in both directions by ``milliseconds`` (each way)."""
        return [
            self.add_toxic(
                proxy, "latency", {"latency": milliseconds, "jitter": jitter}, stream=stream
            )
            for stream in ("upstream", "downstream")
        ]

    def black_hole(self, proxy: str) -> list[str]:
        """Swallow everything in both directions and never close (``timeout`` 0): the link
        stays open and silent, the way a network partition looks to both ends."""
        return [
            self.add_toxic(proxy, "timeout", {"timeout": 0}, stream=stream)
            for stream in ("upstream", "downstream")
        ]

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")


def _proxy(entry: dict[str, Any]) -> Proxy:
    return Proxy(
        name=str(entry["name"]),
        listen=str(entry["listen"]),
        upstream=str(entry["upstream"]),
        enabled=bool(entry["enabled"]),
        toxics=tuple(str(t["name"]) for t in entry.get("toxics") or ()),
    )
