"""The one place for every name that crosses a process boundary.

Topic names, Kafka header names, consumer groups, outbox statuses and the Redis idempotency
key format are defined here and nowhere else, so a producer and its consumers cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

AGGREGATE_ORDER: Final = "Order"
EVENT_ORDER_CREATED: Final = "OrderCreated"
EVENT_ORDER_CANCELLED: Final = "OrderCancelled"

# Inventory's verdict on an order and its release, written to inventory's own outbox in the
# transaction that records them. The aggregate is the order's reservation: ``aggregateId`` is
# the order id (so the Kafka key, and the partition, is the order's), version 1 the verdict
# (StockReserved or StockRejected), version 2 the release of a reserved order (StockReleased).
AGGREGATE_RESERVATION: Final = "Reservation"
EVENT_STOCK_RESERVED: Final = "StockReserved"
EVENT_STOCK_REJECTED: Final = "StockRejected"
EVENT_STOCK_RELEASED: Final = "StockReleased"

# Six partitions: enough to show per-key ordering across partitions and a rebalance between two
# consumers, few enough that a single-node broker on two cores stays quick to start.
TOPIC_PARTITIONS: Final = 6
DLQ_SUFFIX: Final = ".dlq"

INVENTORY_GROUP: Final = "inventory-service"
EMAIL_GROUP: Final = "email-service"
# The order service's consumer of inventory's verdicts (services/order/verdicts).
ORDER_GROUP: Final = "order-service"

# 48 hours: longer than any redelivery window we expect (Kafka retention of a stuck partition,
# a DLQ replay the next working day), short enough that Redis does not grow without bound.
IDEMPOTENCY_TTL_SECONDS: Final = 172_800

# Seven days (Kafka's own default, stated here so what depends on it is derived from it): how
# long a dead-letter topic keeps a record, i.e. how late an operator can still replay it.
# :func:`shared.kafka.ensure_topics` creates every ``*.dlq`` topic with this ``retention.ms``.
DLQ_RETENTION_SECONDS: Final = 604_800
# How long a service remembers an order's lifecycle (:func:`order_state_key`). A replayed
# record can reach a consumer as late as its DLQ keeps it, plus the redelivery window of the
# source topic it is replayed into (the 48 h the dedup keys assume). Forgetting sooner would let
# a late replay confirm an order whose customer was told it is cancelled.
ORDER_STATE_TTL_SECONDS: Final = DLQ_RETENTION_SECONDS + IDEMPOTENCY_TTL_SECONDS

# The envelope version consumers understand; anything else is a poison message.
SCHEMA_VERSION: Final = 1


class OutboxStatus(StrEnum):
    PENDING = "Pending"
    PUBLISHED = "Published"
    FAILED = "Failed"


class Header:
    """Kafka header names. Values are UTF-8 strings."""

    IDEMPOTENCY_KEY: Final = "idempotencyKey"
    EVENT_TYPE: Final = "eventType"
    AGGREGATE_TYPE: Final = "aggregateType"
    AGGREGATE_ID: Final = "aggregateId"
    AGGREGATE_VERSION: Final = "aggregateVersion"
    OCCURRED_AT: Final = "occurredAt"
    TRACEPARENT: Final = "traceparent"
    # Set by the relay: the slot of the event and the epoch of that slot's lease under which it
    # was published (which holder sent it; a slot's records never go back to an older epoch).
    RELAY_SLOT: Final = "relaySlot"
    RELAY_EPOCH: Final = "relayEpoch"
    # DLQ records carry these on top of the original headers.
    FAILURE_REASON: Final = "failureReason"
    RETRY_COUNT: Final = "retryCount"
    ORIGINAL_TOPIC: Final = "originalTopic"
    ORIGINAL_PARTITION: Final = "originalPartition"
    ORIGINAL_OFFSET: Final = "originalOffset"
    CONSUMER_GROUP: Final = "consumerGroup"
    FAILED_AT: Final = "failedAt"
    # Set on a message an operator replayed from the DLQ: "<dlq partition>:<dlq offset>".
    REPLAYED_FROM: Final = "replayedFrom"
    # Set on a replayed message: the one consumer group it is for (the group that dead-lettered
    # it). Every other group skips it and commits past it.
    REPLAY_FOR: Final = "replayFor"


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_EVENT_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]*$")


def _split_camel(event_type: str) -> list[str]:
    if not _EVENT_TYPE.match(event_type):
        raise ValueError(f"event type must be CamelCase ASCII, got {event_type!r}")
    return [part.lower() for part in _CAMEL_BOUNDARY.split(event_type)]


# Inventory's events are named for what happened to the stock and published under the name of
# the service that owns them (``inventory.*``), not ``stock.*``: a topic family per producer.
_TOPIC_OF_EVENT_TYPE: Final = {
    EVENT_STOCK_RESERVED: "inventory.reserved",
    EVENT_STOCK_REJECTED: "inventory.rejected",
    EVENT_STOCK_RELEASED: "inventory.released",
}


def topic_for_event_type(event_type: str) -> str:
    """Kafka topic of an event type: ``OrderCreated`` -> ``order.created``,
    ``StockReserved`` -> ``inventory.reserved`` (the inventory's family, see above).

    The article's ``toLowerCase().replace(/([A-Z])/g, '.$1')`` lower-cases first, so the regex
    never matches and every type maps to one undotted name; this splits on the word boundaries.
    """
    if topic := _TOPIC_OF_EVENT_TYPE.get(event_type):
        return topic
    return ".".join(_split_camel(event_type))


def dlq_topic_for(topic: str) -> str:
    """The dead-letter topic of a source topic: ``order.created`` -> ``order.created.dlq``."""
    return topic + DLQ_SUFFIX


ORDER_CREATED_TOPIC: Final = topic_for_event_type(EVENT_ORDER_CREATED)
ORDER_CREATED_DLQ_TOPIC: Final = dlq_topic_for(ORDER_CREATED_TOPIC)
ORDER_CANCELLED_TOPIC: Final = topic_for_event_type(EVENT_ORDER_CANCELLED)
ORDER_CANCELLED_DLQ_TOPIC: Final = dlq_topic_for(ORDER_CANCELLED_TOPIC)
# One topic per event type (the relay's naming rule), each with its own DLQ.
ORDER_TOPICS: Final = (ORDER_CREATED_TOPIC, ORDER_CANCELLED_TOPIC)
INVENTORY_RESERVED_TOPIC: Final = topic_for_event_type(EVENT_STOCK_RESERVED)
INVENTORY_REJECTED_TOPIC: Final = topic_for_event_type(EVENT_STOCK_REJECTED)
INVENTORY_RELEASED_TOPIC: Final = topic_for_event_type(EVENT_STOCK_RELEASED)
INVENTORY_TOPICS: Final = (
    INVENTORY_RESERVED_TOPIC,
    INVENTORY_REJECTED_TOPIC,
    INVENTORY_RELEASED_TOPIC,
)
# Every topic an event is published to (each has its DLQ besides).
EVENT_TOPICS: Final = (*ORDER_TOPICS, *INVENTORY_TOPICS)
# The topics each consumer group reads, by default: what its lag and its DLQ cover. Inventory
# reads the order's events; email one mail per outcome (the verdicts and the cancel, not the
# creation); the order service inventory's verdicts and releases.
CONSUMER_GROUP_TOPICS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        INVENTORY_GROUP: ORDER_TOPICS,
        EMAIL_GROUP: (INVENTORY_RESERVED_TOPIC, INVENTORY_REJECTED_TOPIC, ORDER_CANCELLED_TOPIC),
        ORDER_GROUP: INVENTORY_TOPICS,
    }
)
ALL_TOPICS: Final = (
    ORDER_CREATED_TOPIC,
    ORDER_CREATED_DLQ_TOPIC,
    ORDER_CANCELLED_TOPIC,
    ORDER_CANCELLED_DLQ_TOPIC,
    *(name for topic in INVENTORY_TOPICS for name in (topic, dlq_topic_for(topic))),
)


def order_state_key(service: str, order_id: str) -> str:
    """Redis key of what ``service`` knows about one order's lifecycle (e.g. email's
    ``confirming``/``confirmed``/``cancelled``/``cancellation_sent``):
    ``order:email:<order id>``, kept :data:`ORDER_STATE_TTL_SECONDS`."""
    if not service or ":" in service:
        raise ValueError(f"service name must be non-empty and free of ':', got {service!r}")
    return f"order:{service}:{order_id}"


def idempotency_key(service: str, event_type: str, event_id: str) -> str:
    """Redis key recording that ``service`` handled one event.

    Example: ``idem:inventory:order_created:<event id>``.

    The service name is part of the key so one consumer's success never suppresses another's
    work (the article shares one key between inventory and email).
    """
    if not service or ":" in service:
        raise ValueError(f"service name must be non-empty and free of ':', got {service!r}")
    return f"idem:{service}:{'_'.join(_split_camel(event_type))}:{event_id}"
