"""``python -m services.order``: serve the order API with uvicorn on ORDER_HOST:ORDER_PORT.

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests finish within
ORDER_DRAIN_SECONDS, runs the lifespan shutdown (closing the MongoDB client) and the process
exits 0. A start-up failure exits non-zero so a supervisor restarts the process.
"""

from __future__ import annotations

import sys

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.auth import AuthSettings
from shared.logging import configure_logging
from shared.settings import load_settings_or_exit
from shared.tracing import instrument_fastapi, traced
from shared.uvicorn_server import serve


def main() -> int:
    settings = load_settings_or_exit(OrderSettings)
    auth = load_settings_or_exit(AuthSettings)
    configure_logging("order", settings.log_level)
    with traced("order", settings.otel_exporter_otlp_endpoint):
        app = create_app(settings, auth)
        instrument_fastapi(app)
        return serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
