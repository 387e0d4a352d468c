"""``python -m services.order``: serve the order API with uvicorn on ORDER_HOST:ORDER_PORT.

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests finish within
ORDER_DRAIN_SECONDS, runs the lifespan shutdown (closing the MongoDB client) and the process
exits 0. A start-up failure exits non-zero so a supervisor restarts the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.logging import configure_logging
from shared.settings import load_settings_or_exit

log = logging.getLogger("services.order")


class _Server(uvicorn.Server):
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


def main() -> int:
    settings = load_settings_or_exit(OrderSettings)
    configure_logging("order", settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # Our JSON-lines root handler formats uvicorn's records too.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_seconds)),
        server_header=False,
    )
    server = _Server(config)
    server.run()
    # `started` is set only once the lifespan and the socket came up.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
