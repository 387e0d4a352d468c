"""``python -m services.order``: serve the order API with uvicorn on ORDER_HOST:ORDER_PORT.

Uvicorn handles SIGTERM/SIGINT: it stops accepting connections, lets in-flight requests finish
within ORDER_DRAIN_SECONDS, runs the lifespan shutdown (closing the MongoDB client) and the
process exits 0. A start-up failure exits non-zero so a supervisor restarts the process.
"""

from __future__ import annotations

import sys

import uvicorn

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.logging import configure_logging


def main() -> int:
    settings = OrderSettings()
    configure_logging("order", settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # Our JSON-lines root handler formats uvicorn's records too.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn sets started only after the lifespan and the socket came up.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
