"""``python -m services.relay`` [run] | retry EVENT_ID | retry --all-failed.

``retry`` puts ``Failed`` outbox events back to ``Pending`` (attempts reset to 0, the last error
kept for the record) so the running leader publishes them on its next sweep, in order with the
events of their aggregate that waited behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from services.relay.main import serve
from services.relay.retry import RetryRefused, retry_all_failed, retry_event
from services.relay.settings import RelaySettings
from shared.lifecycle import stop_event_on_signals
from shared.logging import configure_logging
from shared.mongo import IndexConflict, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from shared.redaction import redact
from shared.settings import load_settings_or_exit
from shared.tracing import traced

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _say(message: str, *, error: bool = False) -> None:
    (sys.stderr if error else sys.stdout).write(message + "\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.relay",
        description="Outbox relay: publishes pending outbox events to Kafka.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="run the relay (the default)")
    retry = commands.add_parser("retry", help="put Failed events back to Pending")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("event_id", nargs="?", help="the outbox event id (24 hex characters)")
    target.add_argument("--all-failed", action="store_true", help="every Failed event")
    return parser


async def _run(settings: RelaySettings) -> int:
    configure_logging("relay", settings.log_level)
    stop = stop_event_on_signals()
    return await serve(settings, stop)


async def retry(settings: RelaySettings, event_id: str | None, all_failed: bool) -> int:
    """Return Failed events to Pending; the exit code says whether anything was done."""
    client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "relay-cli")
    outbox = client[settings.database][OUTBOX_COLLECTION]
    try:
        if all_failed:
            count = await retry_all_failed(outbox)
            _say(f"{count} failed event(s) put back to Pending")
            return EXIT_OK
        assert event_id is not None
        try:
            await retry_event(outbox, event_id)
        except RetryRefused as refused:
            _say(f"error: {refused}", error=True)
            return EXIT_USAGE if refused.bad_id else EXIT_ERROR
        _say(f"event {event_id} put back to Pending")
        return EXIT_OK
    except PyMongoError as exc:
        _say(
            f"error: MongoDB unavailable at {redact(settings.mongo_uri)}: {redact(str(exc))}",
            error=True,
        )
        return EXIT_ERROR
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings_or_exit(RelaySettings)  # exits 2 (EXIT_USAGE) when invalid
    try:
        if args.command == "retry":
            return asyncio.run(retry(settings, args.event_id, args.all_failed))
        with traced("relay", settings.otel_exporter_otlp_endpoint):
            return asyncio.run(_run(settings))
    except IndexConflict as exc:
        _say(f"error: relay cannot start: {redact(str(exc))}", error=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
