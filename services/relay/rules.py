"""The publisher's pure decisions, apart from any I/O: which events of a round may be sent
(:func:`plan_batch`), which acknowledged ones may be marked (:func:`acknowledged`), what a failed
send does to its event (:func:`judge_failures`), and how errors are classified (permanent,
transient, fencing).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from aiokafka import errors as kafka_errors

from services.relay.lease import Fenced
from services.relay.outbox_event import OutboxEvent, PoisonEvent
from shared.errors import FaultKind, TransientFault, classify

# Kafka errors that the same record will hit on every attempt: retrying cannot help.
PERMANENT_KAFKA_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordException,
)
# This producer has been replaced by a newer one with the same transactional_id: we are a zombie.
FENCED_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.ProducerFenced,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.TransactionalIdAuthorizationFailed,
)


def is_fencing(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) says another producer took our transactional id.

    Checked on every producer call and on every record's delivery result: aiokafka fails all
    pending futures with the sender's ``ProducerFenced`` when the broker refuses our epoch.
    """
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (Fenced, *FENCED_ERRORS)):
            return True
        exc = exc.cause if isinstance(exc, BatchFault) else exc.__cause__ or exc.__context__
        seen += 1
    return False


def classify_publish_error(exc: BaseException) -> FaultKind:
    """The shared classification plus what the relay knows about Kafka's permanent errors."""
    if isinstance(exc, (PoisonEvent, *PERMANENT_KAFKA_ERRORS)):
        return FaultKind.PERMANENT
    return classify(exc)


def plan_batch(batch: Sequence[OutboxEvent], blockers: dict[str, int]) -> list[OutboxEvent]:
    """The events of ``batch`` that may be sent now, in send order.

    Events are grouped per aggregate (in order of each aggregate's first appearance) and sorted
    by ``aggregateVersion``. ``blockers`` maps an aggregate to the lowest version that is not
    Published and cannot be sent in this batch (a Failed event): only versions below it may go,
    otherwise an event would overtake an earlier one of its aggregate.
    """
    groups: dict[str, list[OutboxEvent]] = {}
    for event in batch:
        groups.setdefault(event.aggregate_id, []).append(event)
    plan: list[OutboxEvent] = []
    for aggregate_id, events in groups.items():
        limit = blockers.get(aggregate_id)
        for event in sorted(events, key=lambda e: e.aggregate_version):
            if limit is not None and event.aggregate_version >= limit:
                break
            plan.append(event)
    return plan


def acknowledged(outcome: Sequence[BaseException | None], sent: Sequence[bool]) -> list[int]:
    """Indices to mark Published: the sent events acknowledged before the first failed send.

    Everything from the first failed send on stays Pending, even if Kafka acknowledged it, so
    the next round resends in order and no aggregate's events overtake each other. Events that
    were never sent (refused before queueing, or held behind such an event) do not cut the
    prefix: they are not on the wire, and their own aggregate's later events were not sent.
    """
    marked: list[int] = []
    for index, (error, was_sent) in enumerate(zip(outcome, sent, strict=True)):
        if not was_sent:
            continue
        if error is not None:
            break
        marked.append(index)
    return marked


class Verdict(StrEnum):
    """What one failed send does to its event."""

    # Not the event's fault (Kafka away, an error that hit the whole round): transientAttempts.
    TRANSIENT = "transient"
    # The event's own fault, budget left: attempts + 1, stays Pending.
    RETRY = "retry"
    # The event's own fault, permanent or budget spent: Failed.
    FAIL = "fail"


def judge_failures(
    outcome: Sequence[BaseException | None],
    sent: Sequence[bool],
    max_attempts: int,
    attempts: Sequence[int],
) -> dict[int, Verdict]:
    """The verdict for every failed event of a round (index -> verdict); pure.

    A fault spends an event's budget only when it is attributable to the event:

    * refused before it was queued (``sent`` is False: too large, unserialisable), or
    * a delivery error that hit this record alone (aiokafka fails every record of a partition's
      batch with one error object; one object shared by several records is the batch's fault)
      while some other record of the round was acknowledged (evidence that Kafka works).

    Everything else (transient faults, one error for the whole round) is ``TRANSIENT``: a Kafka
    outage followed by a non-retriable error on every record must not park healthy events.
    """
    # Acknowledged by Kafka, even inside a transaction that was then aborted for another record.
    # A failed record is never among them, so "another record got through" is just "any".
    some_delivered = any(
        was_sent and (error is None or isinstance(error, Collateral))
        for error, was_sent in zip(outcome, sent, strict=True)
    )
    sharers: dict[int, int] = {}
    for error in outcome:
        if error is not None and not isinstance(error, Collateral):
            sharers[id(error)] = sharers.get(id(error), 0) + 1
    verdicts: dict[int, Verdict] = {}
    for index, error in enumerate(outcome):
        if error is None or isinstance(error, Collateral):
            continue
        kind = classify_publish_error(error)
        if kind is FaultKind.TRANSIENT:
            verdicts[index] = Verdict.TRANSIENT
            continue
        # A delivery error (sent) must be this record's alone, with Kafka otherwise working.
        if sent[index] and (sharers[id(error)] > 1 or not some_delivered):
            verdicts[index] = Verdict.TRANSIENT
            continue
        give_up = kind is FaultKind.PERMANENT or attempts[index] + 1 >= max_attempts
        verdicts[index] = Verdict.FAIL if give_up else Verdict.RETRY
    return verdicts


class Collateral(Exception):
    """Outcome of an event whose send succeeded inside a transaction that had to be aborted."""


class BatchFault(TransientFault):
    """A fault of the whole batch (producer start, begin, commit): retried without limit."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def describe(error: BaseException | None) -> str:
    if isinstance(error, BatchFault):
        return str(error)
    return f"{type(error).__name__}: {error}"[:1000]
