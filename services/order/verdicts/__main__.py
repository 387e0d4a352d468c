"""`python -m services.order.verdicts [run]`: the order's consumer of inventory's verdicts."""

from __future__ import annotations

import sys

from services.order.verdicts.main import SERVICE, run
from services.order.verdicts.settings import VerdictSettings
from shared.entrypoint import run_worker


def main(argv: list[str] | None = None) -> int:
    return run_worker(
        argv,
        prog="python -m services.order.verdicts",
        service=SERVICE,
        run_help="consume inventory.reserved, inventory.rejected and inventory.released and "
        "move each order to its state (the default)",
        settings_type=VerdictSettings,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
