"""A uvicorn server whose process exits 0 after a clean SIGTERM drain (the HTTP services)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from shared.settings import ServiceSettings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn re-raises a captured SIGTERM after its drain, so the process would die "by
    signal" (-15). The project's contract is exit 0 after a clean drain: handle the signals
    ourselves and only ask uvicorn to exit (a second SIGINT forces it, as in uvicorn)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            yield
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        log.info("stop requested, draining", extra={"signal": signal.Signals(signum).name})
        self.should_exit = True


def serve(app: ASGIApp, settings: ServiceSettings) -> int:
    """Serve ``app`` on the settings' host and port until SIGTERM/SIGINT and a drain of at most
    ``drain_seconds``; the exit code: 0 after a clean run, 1 if it never started."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # Our JSON-lines root handler formats uvicorn's records too.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        server_header=False,
    )
    server = DrainingServer(config)
    server.run()
    # `started` is set only once the lifespan and the socket came up.
    return 0 if server.started else 1
