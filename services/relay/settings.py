"""The relay's own knobs (``RELAY_*``) on top of the shared infrastructure settings."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Final

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.relay.stream_feed import CLOCK_SKEW_SECONDS, MAX_CLOCK_SKEW_SECONDS
from shared.outbox import OutboxTtlSetting
from shared.settings import RelaySlotsSetting, ServiceSettings

# The one failpoint the relay knows: exit right after Kafka acknowledged a batch and before the
# batch is marked Published, the worst instant for a crash (the batch is out, the outbox says not).
FAILPOINT_AFTER_KAFKA_ACK = "after_kafka_ack"
KNOWN_FAILPOINTS = frozenset({FAILPOINT_AFTER_KAFKA_ACK})

# The order API's outbox, and its relays' transactional id prefix (the one they always had).
ORDER_DATABASE: Final = "orders"
ORDER_TRANSACTIONAL_ID: Final = "outbox-relay"


def default_transactional_id(database: str) -> str:
    """The transactional id prefix of the relays of ``database``'s outbox when none is set:
    ``outbox-relay`` for the order API's (``orders``), ``<database>-relay`` for any other
    (``inventory-relay``). Relays of two outboxes must never share one: slot n of each would
    use the same Kafka transactional id and fence the other's producer at every turn."""
    return ORDER_TRANSACTIONAL_ID if database == ORDER_DATABASE else f"{database}-relay"


def _default_instance_id() -> str:
    # Host and pid make the lease document readable; the random suffix keeps a restarted process
    # that reuses a pid from being mistaken for the previous owner.
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RelaySettings(ServiceSettings, OutboxTtlSetting, RelaySlotsSetting):
    """One relay process serves one outbox: the database ``RELAY_DATABASE`` (the order API's
    ``orders`` by default, ``inventory`` for inventory's verdicts). Its leases, membership,
    resume token and slots live in that database next to the outbox they fence."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)

    port: int = Field(default=8001, ge=0, le=65535)
    database: str = Field(default=ORDER_DATABASE, min_length=1)
    instance_id: str = Field(default_factory=_default_instance_id, min_length=1)

    # 500: enough to amortise a Kafka transaction and one Mongo update per batch, small enough
    # that a batch (at most ~500 KB of typical orders) is acknowledged in well under a second.
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # The change stream wakes the relay at once; the sweep only catches what the stream missed
    # (and events set Pending again by a retry). Each held slot sweeps about this often (two
    # queries), so the default is what an idle pipeline pays: at 1 s, 16 slots in each of two
    # outboxes made 64 queries a second and half of the Python MongoDB server's idle CPU, and
    # at light load a slot's sweep came due before nearly every stream-fed round (issue 21).
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=60)
    # Failures of unknown cause an event may have before it is parked as Failed. Errors known to
    # be permanent (too large, unserialisable) fail it at once: the same bytes fail the same way.
    max_attempts: int = Field(default=5, ge=1, le=1000)

    # Each slot lease (and the membership heartbeat) is renewed every ``lease_renew_seconds``,
    # three renewals per TTL, so one slow or lost renewal does not cost a slot, and a dead
    # relay's slots are taken over within ``lease_ttl`` plus one renewal interval.
    lease_ttl_seconds: float = Field(default=10.0, gt=0, le=600)
    lease_renew_seconds: float = Field(default=3.0, gt=0, le=300)
    # The prefix of the slots' Kafka transactional ids, ``<id>-slot-<n>``, shared by every relay
    # of one outbox: a new holder's producer bumps the producer epoch of the slot's id, and the
    # broker refuses the old holder's writes from then on (fencing). An empty value turns
    # transactions off (prefix marking only, no zombie fencing in Kafka). Unset, it follows
    # from the database (default_transactional_id): another outbox's relays get another id.
    transactional_id: str = Field(default=ORDER_TRANSACTIONAL_ID)

    # How far apart the producer's clock (it stamps createdAt) and the relay's may be: an event
    # is published straight from the change stream only when its createdAt proves it was written
    # inside this holder's tenure and moments ago (services/relay/stream_feed.py); within the
    # first skew of a tenure the sweep publishes. 0 only where both share one clock (the tests).
    clock_skew_seconds: float = Field(default=CLOCK_SKEW_SECONDS, ge=0, le=MAX_CLOCK_SKEW_SECONDS)

    # How often pending-count and oldest-pending-age gauges are refreshed (one count each time).
    metrics_interval_seconds: float = Field(default=5.0, gt=0, le=300)
    # The resume token is written at most this often: a write per insert would double the load.
    resume_token_save_seconds: float = Field(default=1.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _transactional_id_of_the_database(cls, data: Any) -> Any:
        if isinstance(data, dict) and "transactional_id" not in data:
            database = data.get("database", ORDER_DATABASE)
            if isinstance(database, str):
                return {**data, "transactional_id": default_transactional_id(database)}
        return data

    @model_validator(mode="after")
    def _check_relay(self) -> RelaySettings:
        if self.lease_renew_seconds * 2 > self.lease_ttl_seconds:
            raise ValueError("lease_renew_seconds must be at most half of lease_ttl_seconds")
        if self.failpoint and self.failpoint not in KNOWN_FAILPOINTS:
            raise ValueError(
                f"unknown failpoint {self.failpoint!r}; known: {sorted(KNOWN_FAILPOINTS)}"
            )
        return self

    @property
    def transactional(self) -> bool:
        return bool(self.transactional_id)
