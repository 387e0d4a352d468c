"""``/healthz``, ``/readyz`` and ``/metrics`` for the worker services (relay and consumers), and
the readiness sampler behind every service's ``service_ready`` gauge (the order API's too).

A deliberately small HTTP/1.1 server on asyncio streams: the workers need three GET endpoints,
not a web framework with its own signal handling competing with the worker's drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from shared.redaction import redact

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
# The readiness checks with the reason a probe failed (None when it did not).
ReadyProbe = Callable[[], Awaitable[tuple[dict[str, bool], str | None]]]

# A probe that hangs is a failed probe: readiness checks get this long in all.
READY_TIMEOUT_SECONDS = 3.0

# The gauge an alert reads (deploy/prometheus/alerts.yml ServiceNotReady): Prometheus scrapes
# /metrics, not /readyz, so the readiness answer is sampled into this series.
READY_METRIC = "service_ready"
# How often the readiness loop samples the checks for the gauge: well inside Prometheus's 15 s
# scrape interval (deploy/prometheus/prometheus.yml), so each scrape reads a recent answer.
READY_SAMPLE_SECONDS = 5.0
# A sample older than this reads as not ready: if the loop stalls (a blocked event loop), the
# gauge must not go on saying "ready". Three sampling periods plus one hung check.
READY_SAMPLE_MAX_AGE_SECONDS = 3 * READY_SAMPLE_SECONDS + READY_TIMEOUT_SECONDS


def readiness_gauge(registry: CollectorRegistry) -> Gauge:
    """``service_ready`` (1 when every readiness check passes) in ``registry``."""
    return Gauge(
        READY_METRIC,
        f"1 when every readiness check passed (sampled every {READY_SAMPLE_SECONDS:g} s)",
        registry=registry,
    )


class ReadinessSampler:
    """The readiness answer for ``/metrics``: a loop runs the checks, a scrape reads the result.

    A scrape never runs a check itself, so ``/metrics`` answers at once even while a dependency
    hangs (a check may take up to ``READY_TIMEOUT_SECONDS``; Prometheus would otherwise see a
    slow or timed-out scrape exactly when it matters). The gauge reads 1 only while the latest
    sample passed and is at most ``max_age`` seconds old; before the first sample it reads 0.
    ``/readyz`` runs the checks live through :meth:`check`, which records its answer too.
    """

    def __init__(
        self,
        probe: ReadyProbe,
        gauge: Gauge,
        *,
        interval: float = READY_SAMPLE_SECONDS,
        max_age: float = READY_SAMPLE_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._max_age = max_age
        self._clock = clock
        self._last: tuple[float, bool] | None = None  # (when, every check passed)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        gauge.set_function(self.value)

    def record(self, checks: Mapping[str, bool]) -> None:
        self._last = (self._clock(), all(checks.values()))

    def value(self) -> float:
        """The gauge's value at this instant (called by the scrape)."""
        last = self._last
        if last is None:
            return 0.0
        at, passed = last
        return 1.0 if passed and self._clock() - at <= self._max_age else 0.0

    async def check(self) -> tuple[dict[str, bool], str | None]:
        """Run the checks now, record the answer, and return it (with the failure reason)."""
        checks, reason = await self._probe()
        self.record(checks)
        return checks, reason

    def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._sample_forever(), name="readiness-sampler")

    async def stop(self) -> None:
        """End the loop; bounded even if a driver call swallows the cancellation (Python 3.11's
        ``asyncio.wait_for``, CPython gh-86296): the loop then ends at its next turn."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        task.cancel()
        _, late = await asyncio.wait({task}, timeout=READY_TIMEOUT_SECONDS + 1)
        if late:
            log.warning("readiness loop still running at shutdown")

    async def _sample_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.check()
            except Exception as exc:  # a probe is written not to raise; never let the loop die
                log.warning("readiness sample failed", extra={"reason": repr(exc)})
                self.record({"error": False})
            # The sampling period itself, cut short by stop().
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)


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
        self,
        host: str,
        port: int,
        ready: ReadyCheck,
        registry: CollectorRegistry,
        *,
        ready_sample_seconds: float = READY_SAMPLE_SECONDS,
        not_ready_reason: Callable[[], str | None] | None = None,
    ) -> None:
        self._host, self._port = host, port
        self._ready = ready
        # Why a failing check fails, when the service knows more than the check's name.
        self._not_ready_reason = not_ready_reason
        self._registry = registry
        self._readiness = ReadinessSampler(
            self._checks, readiness_gauge(registry), interval=ready_sample_seconds
        )
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        self._readiness.start()

    async def stop(self) -> None:
        await self._readiness.stop()
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
            checks = await asyncio.wait_for(self._ready(), timeout=READY_TIMEOUT_SECONDS)
        except Exception as exc:  # a probe failure is an answer, not a crash
            reason = repr(exc)
            log.warning("readiness check failed", extra={"reason": reason})
            return {"error": False}, reason
        failing = not all(checks.values())
        return checks, (self._not_ready_reason() if failing and self._not_ready_reason else None)

    async def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method != "GET":
            return "405 Method Not Allowed", "application/json", b'{"detail":"GET only"}'
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"ok"}'
        if path == "/readyz":
            checks, reason = await self._readiness.check()
            ok = all(checks.values())
            return (
                ("200 OK" if ok else "503 Service Unavailable"),
                "application/json",
                json.dumps(readiness_body(checks, reason)).encode(),
            )
        if path == "/metrics":
            # service_ready comes from the readiness loop: a scrape never waits for a check.
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        return "404 Not Found", "application/json", b'{"detail":"not found"}'
