"""`python -m services.inventory [run]` or `python -m services.inventory seed-stock FILE.json`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from services.inventory.main import SeedFileError, run, seed_stock
from services.inventory.settings import InventorySettings
from shared.logging import configure_logging
from shared.redaction import redact
from shared.settings import load_settings_or_exit
from shared.tracing import traced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.inventory")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="consume order.created and reserve stock (the default)")
    seed = commands.add_parser("seed-stock", help="load stock levels from a JSON file")
    seed.add_argument("file", type=Path, help='{"SKU-1": 100, ...} or [{"sku", "available"}]')
    args = parser.parse_args(argv)

    settings = load_settings_or_exit(InventorySettings)
    configure_logging("inventory", settings.log_level)
    if args.command == "seed-stock":
        try:
            count = asyncio.run(seed_stock(settings, args.file))
        except SeedFileError as exc:
            sys.stderr.write(f"seed-stock: {exc}\n")
            return 2
        except Exception as exc:  # e.g. MongoDB unreachable: say so in one line, exit non-zero
            reason = redact(repr(exc))
            sys.stderr.write(f"seed-stock: could not write stock from {args.file}: {reason}\n")
            return 1
        sys.stdout.write(f"seeded {count} skus from {args.file}\n")
        return 0
    with traced("inventory", settings.otel_exporter_otlp_endpoint):
        return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
