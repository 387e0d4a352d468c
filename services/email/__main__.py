"""`python -m services.email [run]`: the customer email consumer (verdicts and cancellations)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.email.main import run
from services.email.settings import EmailSettings
from shared.logging import configure_logging
from shared.settings import load_settings_or_exit
from shared.tracing import traced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.email")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser(
        "run",
        help="consume inventory.reserved, inventory.rejected and order.cancelled and send "
        "their emails (the default)",
    )
    parser.parse_args(argv)
    settings = load_settings_or_exit(EmailSettings)
    configure_logging("email", settings.log_level)
    with traced("email", settings.otel_exporter_otlp_endpoint):
        return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
