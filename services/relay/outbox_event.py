"""An outbox document as the relay reads it: :class:`OutboxEvent` (strict on the fields its
producer writes, lenient on the relay's own bookkeeping) and the Kafka record it becomes.

The relay reads whichever outbox it is configured for (``RELAY_DATABASE``): the order API's or
inventory's. Nothing here depends on the aggregate's type: the topic follows from the event
type (``shared.contracts.topic_for_event_type``), the key is the aggregate id.

A document that cannot be read is a :class:`Malformed` (it becomes ``Failed`` with the reason);
one that can be read but not sent (an unknown event type, a payload that is not text) raises
:class:`PoisonEvent` when it is turned into a record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from shared.contracts import Header, topic_for_event_type
from shared.kafka import Headers, encode_headers
from shared.outbox import FIRST_VERSION, OutboxField


class PoisonEvent(Exception):
    """The outbox document itself cannot become a Kafka record (bad type, missing payload)."""


class MalformedEvent(PoisonEvent):
    """An outbox document the relay cannot even read (a field missing or of the wrong type)."""


@dataclass(frozen=True)
class OutboxEvent:
    id: ObjectId
    aggregate_type: str
    aggregate_id: str
    aggregate_version: int
    event_type: str
    payload: Any
    attempts: int
    created_at: datetime
    traceparent: str | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> OutboxEvent:
        """Read an outbox document; raises :class:`MalformedEvent` naming the field at fault.

        Strict on the fields a producer writes (the contract of ``shared.outbox``): a
        version of ``"v2"`` or a Decimal128, a missing aggregate id, a creation time that is
        not a date. Lenient only on the relay's own bookkeeping (``attempts``), which an
        operator may have reset by hand.
        """
        f = OutboxField
        try:
            return cls(
                id=doc[f.ID],
                aggregate_type=_text(doc, f.AGGREGATE_TYPE),
                aggregate_id=_text(doc, f.AGGREGATE_ID),
                aggregate_version=_version(doc),
                event_type=_text(doc, f.EVENT_TYPE),
                payload=doc.get(f.PAYLOAD),
                attempts=_count(doc, f.ATTEMPTS),
                created_at=_moment(doc, f.CREATED_AT),
                traceparent=_optional_text(doc, f.TRACEPARENT),
            )
        except KeyError as exc:  # only _id, which MongoDB always sets
            raise MalformedEvent(f"{exc} is missing") from exc

    def to_record(self) -> tuple[str, bytes, bytes, Headers]:
        """``(topic, key, value, headers)``; raises ``PoisonEvent`` if that is impossible."""
        try:
            topic = topic_for_event_type(self.event_type)
        except ValueError as exc:
            raise PoisonEvent(str(exc)) from exc
        if not isinstance(self.payload, str):
            raise PoisonEvent(f"payload must be a JSON string, got {type(self.payload).__name__}")
        if not self.aggregate_id:
            raise PoisonEvent("aggregateId is missing")
        try:
            value = self.payload.encode()
        except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
            raise PoisonEvent(f"payload is not encodable as UTF-8: {exc}") from exc
        headers = {
            Header.IDEMPOTENCY_KEY: str(self.id),
            Header.EVENT_TYPE: self.event_type,
            Header.AGGREGATE_TYPE: self.aggregate_type,
            Header.AGGREGATE_ID: self.aggregate_id,
            Header.AGGREGATE_VERSION: str(self.aggregate_version),
            Header.OCCURRED_AT: utc(self.created_at).isoformat(),
        }
        if self.traceparent:
            headers[Header.TRACEPARENT] = self.traceparent
        return topic, self.aggregate_id.encode(), value, encode_headers(headers)


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{name} must be a non-empty string, got {_shown(value)}")
    return value


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise MalformedEvent(f"{name} must be a string or null, got {_shown(value)}")
    return value or None


def _version(doc: Mapping[str, Any]) -> int:
    name = OutboxField.AGGREGATE_VERSION
    value = doc.get(name)
    # bool is an int in Python; Int64 is one too and is what a driver may write for a long.
    if not isinstance(value, int) or isinstance(value, bool) or value < FIRST_VERSION:
        raise MalformedEvent(f"{name} must be an integer >= {FIRST_VERSION}, got {_shown(value)}")
    return int(value)


def _count(doc: Mapping[str, Any], name: str) -> int:
    value = doc.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedEvent(f"{name} must be an integer >= 0, got {_shown(value)}")
    return int(value)


def _moment(doc: Mapping[str, Any], name: str) -> datetime:
    value = doc.get(name)
    if not isinstance(value, datetime):
        raise MalformedEvent(f"{name} must be a date, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:200]


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class Malformed:
    """An outbox document that could not be read, with the reason (it becomes Failed)."""

    id: Any
    aggregate_id: str | None
    reason: str


def read_event(doc: Mapping[str, Any], malformed: list[Malformed]) -> OutboxEvent | None:
    """The event of ``doc``, or None after recording why it cannot be read."""
    try:
        return OutboxEvent.from_doc(doc)
    except MalformedEvent as exc:
        aggregate = doc.get(OutboxField.AGGREGATE_ID)
        malformed.append(
            Malformed(
                doc.get(OutboxField.ID), aggregate if isinstance(aggregate, str) else None, str(exc)
            )
        )
        return None
