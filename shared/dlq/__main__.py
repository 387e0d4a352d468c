"""Operator CLI for the dead-letter queue.

    python -m shared.dlq list [--group G]
    python -m shared.dlq show REF
    python -m shared.dlq replay [--group G] (--offset REF | --all) [--dry-run]

REF is ``partition:offset`` as printed by ``list`` (a bare offset is accepted when it is unique
across partitions). ``replay`` republishes each selected record to its ``originalTopic`` with
the original key, value and headers plus ``replayedFrom=<partition:offset>`` and
``replayFor=<consumerGroup>``: only the group that dead-lettered the record acts on the copy;
every other group reading the topic skips it. Each DLQ record is replayed once: a ledger key in
Redis is claimed for a short while (``DLQ_REPLAY_CLAIM_SECONDS``), the copy is sent, and only
after Kafka acknowledged it is the key marked replayed. A run killed in between leaves a claim
that expires (the record stays replayable); if the copy had gone out, the second copy is
skipped by the target group's dedup key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import TextIO

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.contracts import ORDER_CREATED_DLQ_TOPIC, Header
from shared.dlq import StoredDlqRecord, read_dlq, replay_ledger_ttl
from shared.idempotency import DONE, Claim, IdempotencyStore
from shared.kafka import make_producer
from shared.redis import make_redis
from shared.settings import InfraSettings, load_settings_or_exit


class DlqSettings(InfraSettings):
    model_config = SettingsConfigDict(env_prefix="DLQ_", extra="ignore", frozen=True)

    topic: str = Field(default=ORDER_CREATED_DLQ_TOPIC, min_length=1)
    # How long one run holds a record's ledger key while it sends the copy. A killed run blocks
    # a new replay of that record for at most this long; the send itself is cut at 80 % of it,
    # so a live run never outlives its claim.
    replay_claim_seconds: int = Field(default=60, ge=2, le=3_600)


# The ledger's "key space": a DLQ record's ledger key is claimed and marked like a dedup key.
LEDGER_SERVICE = "dlq-replay"


class CliError(Exception):
    pass


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _decode(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def format_table(records: Sequence[StoredDlqRecord]) -> str:
    rows = [("OFFSET", "KEY", "GROUP", "REASON", "FAILED AT")]
    for r in records:
        h = r.headers
        rows.append(
            (
                r.ref,
                _short(_decode(r.key), 26),
                r.consumer_group,
                _short(h.get(Header.FAILURE_REASON, ""), 70),
                h.get(Header.FAILED_AT, ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines) + f"\n({len(records)} record{'s' if len(records) != 1 else ''})\n"


def _number(text: str) -> int | None:
    # isascii() too: "\u00b2" is str.isdigit() and int() raises on it; "\u0663" int() reads as 3.
    return int(text) if text.isascii() and text.isdigit() else None


def parse_ref(ref: str) -> tuple[int | None, int]:
    """``(partition, offset)`` of ``PARTITION:OFFSET``, or ``(None, offset)`` of a bare offset,
    read as numbers (``1:07`` is ``1:7``); a :class:`CliError` naming ``ref`` for anything else."""
    head, colon, tail = ref.strip().partition(":")
    partition = _number(head) if colon else None
    offset = _number(tail if colon else head)
    if offset is None or (colon and partition is None):
        raise CliError(
            f"a record is PARTITION:OFFSET or OFFSET in digits, as list prints it; got {ref!r}"
        )
    return partition, offset


def select(
    records: Sequence[StoredDlqRecord], *, group: str | None = None, ref: str | None = None
) -> list[StoredDlqRecord]:
    """Filter by consumer group and/or ``partition:offset`` (or a unique bare offset)."""
    chosen = [r for r in records if group is None or r.consumer_group == group]
    if ref is None:
        return chosen
    partition, offset = parse_ref(ref)
    matches = [
        r for r in chosen if r.offset == offset and (partition is None or r.partition == partition)
    ]
    if partition is None and len(matches) > 1:
        refs = ", ".join(r.ref for r in matches)
        raise CliError(f"offset {offset} exists in several partitions ({refs}); use P:O")
    if not matches:
        raise CliError(f"no DLQ record {ref}" + (f" for group {group}" if group else ""))
    return matches


def format_record(record: StoredDlqRecord) -> str:
    lines = [f"record   {record.topic} {record.ref}", f"key      {_decode(record.key)}", "headers"]
    lines += [f"  {name}: {value}" for name, value in record.headers.items()]
    lines += ["value", f"  {_decode(record.value)}", ""]
    return "\n".join(lines)


async def replay(
    settings: DlqSettings, records: Sequence[StoredDlqRecord], *, dry_run: bool, out: TextIO
) -> int:
    """Republish ``records`` to their groups; returns how many were sent (dry run: would be).

    Claim (short lease), send and wait for the ack, then mark replayed: a crash anywhere leaves
    each record replayed or replayable, never "already replayed" without a copy sent.
    """
    ledger_ttl = (
        None
        if dry_run
        else await replay_ledger_ttl(settings.kafka_bootstrap_servers, settings.topic)
    )
    redis = make_redis(settings.redis_url)
    producer = None if dry_run else make_producer(settings.kafka_bootstrap_servers)
    ledger = IdempotencyStore(
        redis, LEDGER_SERVICE, lease_seconds=settings.replay_claim_seconds, ttl_seconds=ledger_ttl
    )
    sent = 0
    try:
        if producer is not None:
            await producer.start()
        for record in records:
            target = record.original_topic
            if not target:
                out.write(f"skip {record.ref}: no {Header.ORIGINAL_TOPIC} header\n")
                continue
            if not record.consumer_group:
                # Without a group the copy would reach every group reading the topic.
                out.write(f"skip {record.ref}: no {Header.CONSUMER_GROUP} header\n")
                continue
            line = f"{record.ref} -> {target} for {record.consumer_group} key={_decode(record.key)}"
            key = record.ledger_key()
            if dry_run:
                state = await redis.get(key)
                verb = "would replay" if state is None else _ledger_state(state == DONE, settings)
                out.write(f"{verb} {line}\n")
                sent += 1 if state is None else 0
                continue
            claim = await ledger.claim(key)
            if claim is not Claim.CLAIMED:
                out.write(f"skip {record.ref}: {_ledger_state(claim is Claim.DONE, settings)}\n")
                continue
            assert producer is not None
            try:
                await asyncio.wait_for(
                    producer.send_and_wait(
                        target, key=record.key, value=record.value, headers=record.replay_headers()
                    ),
                    timeout=settings.replay_claim_seconds * 0.8,
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await ledger.release(key)  # not sent (or not known to be): replayable now
                raise
            # Marked only now, after Kafka's ack. A crash before this line leaves the claim to
            # expire: the record is replayable, and a second copy is skipped by the dedup key.
            await ledger.mark_done(key)
            out.write(f"replayed {line}\n")
            sent += 1
    finally:
        if producer is not None:
            await producer.stop()
        await redis.aclose()
    return sent


def _ledger_state(replayed: bool, settings: DlqSettings) -> str:
    if replayed:
        return "already replayed"
    return (
        "being replayed by another run (the claim of a run that died expires within "
        f"{settings.replay_claim_seconds} s)"
    )


async def main_async(argv: Sequence[str] | None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.dlq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="table of DLQ records")
    listing.add_argument("--group", help="only records from this consumer group")
    show = commands.add_parser("show", help="one record with all headers and its value")
    show.add_argument("ref", metavar="OFFSET", help="PARTITION:OFFSET as printed by list")
    rep = commands.add_parser(
        "replay",
        help="republish to the original topic for the group that failed it, once per record",
    )
    rep.add_argument("--group", help="only records from this consumer group")
    which = rep.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", metavar="OFFSET", help="PARTITION:OFFSET of one record")
    which.add_argument("--all", action="store_true", help="every (matching) record")
    rep.add_argument("--dry-run", action="store_true", help="print, do not send")
    args = parser.parse_args(argv)
    ref = args.ref if args.command == "show" else getattr(args, "offset", None)
    if ref is not None:
        parse_ref(ref)  # a malformed reference is refused before Kafka is asked

    settings = load_settings_or_exit(DlqSettings)
    records = await read_dlq(settings.kafka_bootstrap_servers, settings.topic)
    if args.command == "list":
        out.write(format_table(select(records, group=args.group)))
    elif args.command == "show":
        for record in select(records, ref=args.ref):
            out.write(format_record(record))
    else:
        chosen = select(records, group=args.group, ref=args.offset)
        count = await replay(settings, chosen, dry_run=args.dry_run, out=out)
        out.write(f"{'would replay' if args.dry_run else 'replayed'} {count} record(s)\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return asyncio.run(main_async(argv))
    except CliError as exc:
        sys.stderr.write(f"dlq: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
