"""``python -m services.console``: serve the operator console on CONSOLE_HOST:CONSOLE_PORT
(127.0.0.1:8004). ``CONSOLE_TOKEN`` is required (32 characters or more); without it the process
exits 2 with a message naming the variable."""

from __future__ import annotations

import sys

from services.console.app import create_app
from services.console.settings import ConsoleSettings
from shared.logging import configure_logging
from shared.settings import load_settings_or_exit
from shared.uvicorn_server import serve


def main() -> int:
    settings = load_settings_or_exit(ConsoleSettings)
    configure_logging("console", settings.log_level)
    return serve(create_app(settings), settings)


if __name__ == "__main__":
    sys.exit(main())
