"""Relay slots: which relay publishes an aggregate's events.

The outbox is divided into a fixed number of slots (``RELAY_SLOTS``, default 16). An event's
slot is a function of its ``aggregateId`` alone, so every event of one aggregate lives in one
slot, and one relay at a time publishes a slot: per-aggregate order holds by construction.

The function is **CRC-32 (IEEE 802.3, the polynomial of zlib, gzip, PNG and Ethernet) of the
UTF-8 bytes of the aggregate id, modulo the slot count**. Every language has it in its standard
library (Python ``zlib.crc32``, Java ``java.util.zip.CRC32``, Go ``hash/crc32.ChecksumIEEE``,
Node ``zlib.crc32``), so a producer written in another language can store the same slot; the
fixed vectors of ``tests/unit/shared/test_slots.py`` are the reference. CRC-32 is not a
cryptographic hash and need not be: slots only spread load, and aggregate ids (ObjectIds) are
not chosen by an adversary.

Changing the slot count moves most aggregates to another slot: it is a migration, described in
docs/operating/scaling.md (upgrades and migrations) and carried out by
``python -m services.relay reslot``.
"""

from __future__ import annotations

import zlib
from typing import Final

DEFAULT_RELAY_SLOTS: Final = 16
# Each slot is a lease document, a Kafka transactional id and a publish loop in its owner:
# thousands of them would cost more in renewals and idle producers than they could spread.
MAX_RELAY_SLOTS: Final = 1024
SLOTS_ENV: Final = "RELAY_SLOTS"


def slot_for(aggregate_id: str, slots: int) -> int:
    """The slot of ``aggregate_id`` among ``slots``: ``crc32(utf8(aggregate_id)) % slots``.

    Stable across processes, restarts, platforms and languages (no per-process hash seed).
    Raises ``ValueError`` for a slot count below 1.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    # surrogatepass: an id with a lone surrogate still gets a slot (the relay then marks the
    # event Failed for its payload, in that slot) instead of an exception in the order API.
    return zlib.crc32(aggregate_id.encode("utf-8", "surrogatepass")) % slots
