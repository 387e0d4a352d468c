"""`python -m services.email [run]`: the customer email consumer (verdicts and cancellations)."""

from __future__ import annotations

import sys

from services.email.main import run
from services.email.settings import EmailSettings
from shared.entrypoint import run_worker


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        argv,
        prog="python -m services.email",
        service="email",
        run_help="consume inventory.reserved, inventory.rejected and order.cancelled and send "
        "their emails (the default)",
        settings_type=EmailSettings,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
