"""``/healthz``, ``/readyz`` and ``/metrics`` for the worker services (relay and consumers).

A deliberately small HTTP/1.1 server on asyncio streams: the workers need three GET endpoints,
not a web framework with its own signal handling competing with the worker's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.redaction import redact

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]

# A probe that hangs is a failed probe: readiness checks get this long in all.
READY_TIMEOUT_SECONDS = 3.0

# The gauge an alert reads (deploy/prometheus/alerts.yml ServiceNotReady): Prometheus scrapes
# /metrics, not /readyz, so each scrape samples the readiness answer into this series.
READY_METRIC = "service_ready"


def readiness_gauge(registry: CollectorRegistry) -> Gauge:
    """``service_ready`` (1 when every readiness check passes) in ``registry``."""
    return Gauge(
        READY_METRIC, "1 when every readiness check passes (sampled at scrape)", registry=registry
    )


def readiness_body(checks: Mapping[str, bool], reason: str | None = None) -> dict[str, Any]:
    """The ``/readyz`` JSON of every service: status, each check, and why a probe failed.

    ``reason`` is usually an exception's text, which can quote a connection URI: it is
    redacted here, so no readiness body ever shows a password.
    """
    body: dict[str, Any] = {
        "status": "ready" if all(checks.values()) else "not ready",
        "checks": dict(checks),
    }
    if reason:
        body["reason"] = redact(reason)
    return body


class HealthServer:
    def __init__(
        self, host: str, port: int, ready: ReadyCheck, registry: CollectorRegistry
    ) -> None:
        self._host, self._port = host, port
        self._ready = ready
        self._registry = registry
        self._ready_gauge = readiness_gauge(registry)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (
                b"\r\n",
                b"\n",
                b"",
            ):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            status, content_type, body = await self._route(parts[0] if parts else "", path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _checks(self) -> tuple[dict[str, bool], str | None]:
        """The readiness checks, and why the probe itself failed (a hang or a crash), if it did."""
        try:
            return await asyncio.wait_for(self._ready(), timeout=READY_TIMEOUT_SECONDS), None
        except Exception as exc:  # a probe failure is an answer, not a crash
            reason = repr(exc)
            log.warning("readiness check failed", extra={"reason": reason})
            return {"error": False}, reason

    async def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "application/json", b'{"detail":"GET only"}'
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            checks, reason = await self._checks()
            ok = all(checks.values())
            return (
                ("200 OK" if ok else "503 Service Unavailable"),
                "application/json",
                json.dumps(readiness_body(checks, reason)).encode(),
            )
        if path == "/metrics":
            checks, _ = await self._checks()
            self._ready_gauge.set(1 if all(checks.values()) else 0)
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "application/json", b'{"detail":"not found"}'
