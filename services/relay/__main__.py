"""``python -m services.relay`` [run] | retry EVENT_ID | retry --all-failed [--slot N] | reslot.

``retry`` puts ``Failed`` outbox events back to ``Pending`` (attempts reset to 0, the last error
kept for the record) so the relay holding each one's slot publishes it on its next sweep, in
order with the events of their aggregate that waited behind them. ``--slot N`` limits
``--all-failed`` to one slot.

``reslot`` is the migration after a change of ``RELAY_SLOTS``: with every relay stopped, it
stores each Pending and Failed event's slot under the new count (docs/operating/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pymongo.errors import PyMongoError

from services.relay.backfill import ReslotRefused
from services.relay.backfill import reslot as move_to_slots
from services.relay.main import serve
from services.relay.members import MEMBERS_COLLECTION, Membership
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
    retry.add_argument(
        "--slot",
        type=int,
        metavar="N",
        help="with --all-failed: only the events of slot N (0 .. RELAY_SLOTS-1)",
    )
    commands.add_parser(
        "reslot",
        help="after changing RELAY_SLOTS, with every relay stopped: move events to their slots",
    )
    return parser


def _mongo_unavailable(settings: RelaySettings, exc: PyMongoError) -> int:
    _say(
        f"error: MongoDB unavailable at {redact(settings.mongo_uri)}: {redact(str(exc))}",
        error=True,
    )
    return EXIT_ERROR


async def reslot(settings: RelaySettings) -> int:
    """The RELAY_SLOTS migration; refused (exit 1) while a relay is running."""
    client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "relay-cli")
    db = client[settings.database]
    try:
        members = Membership(db[MEMBERS_COLLECTION], "relay-cli", 0, settings.relay_slots)
        live = [m.instance for m in await members.live()]
        moved = await move_to_slots(db[OUTBOX_COLLECTION], live, settings.relay_slots)
    except ReslotRefused as refused:
        _say(f"error: {refused}", error=True)
        return EXIT_ERROR
    except PyMongoError as exc:
        return _mongo_unavailable(settings, exc)
    finally:
        await client.close()
    _say(f"{moved} event(s) moved to their slot among RELAY_SLOTS={settings.relay_slots}")
    return EXIT_OK


async def _run(settings: RelaySettings) -> int:
    configure_logging("relay", settings.log_level)
    stop = stop_event_on_signals()
    return await serve(settings, stop)


async def retry(
    settings: RelaySettings, event_id: str | None, all_failed: bool, slot: int | None = None
) -> int:
    """Return Failed events to Pending; the exit code says whether anything was done."""
    if slot is not None and not (all_failed and 0 <= slot < settings.relay_slots):
        _say(
            f"error: --slot needs --all-failed and a slot from 0 to {settings.relay_slots - 1} "
            f"(RELAY_SLOTS={settings.relay_slots}), got {slot}",
            error=True,
        )
        return EXIT_USAGE
    client = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "relay-cli")
    outbox = client[settings.database][OUTBOX_COLLECTION]
    try:
        if all_failed:
            count = await retry_all_failed(outbox, slot)
            where = f" in slot {slot}" if slot is not None else ""
            _say(f"{count} failed event(s){where} put back to Pending")
            return EXIT_OK
        assert event_id is not None
        try:
            event_slot = await retry_event(outbox, event_id)
        except RetryRefused as refused:
            _say(f"error: {refused}", error=True)
            return EXIT_USAGE if refused.bad_id else EXIT_ERROR
        where = f"slot {event_slot}" if event_slot is not None else "its slot is assigned first"
        _say(f"event {event_id} put back to Pending ({where})")
        return EXIT_OK
    except PyMongoError as exc:
        return _mongo_unavailable(settings, exc)
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings_or_exit(RelaySettings)  # exits 2 (EXIT_USAGE) when invalid
    try:
        if args.command == "reslot":
            return asyncio.run(reslot(settings))
        if args.command == "retry":
            return asyncio.run(retry(settings, args.event_id, args.all_failed, args.slot))
        with traced("relay", settings.otel_exporter_otlp_endpoint):
            return asyncio.run(_run(settings))
    except IndexConflict as exc:
        _say(f"error: relay cannot start: {redact(str(exc))}", error=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
