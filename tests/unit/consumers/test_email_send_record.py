"""The email handler's promises on fakes: once a mail left, no retry, redelivery or replay sends it
again (a failed write after the 250 is retried as a write); one verdict mail per order; no
verdict mail for a cancelled order."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.email.handlers import (
    OUTCOME_CANCELLATION_SENT,
    OUTCOME_REJECTION_SENT,
    OUTCOME_SENT,
    OUTCOME_SKIPPED_ALREADY_SENT,
    OUTCOME_SKIPPED_CANCELLED,
    OUTCOME_SKIPPED_OTHER_VERDICT,
    ConfirmationSender,
)
from services.email.order_state import OrderState, Verdict
from services.email.settings import EmailSettings
from shared.consumer import Delivery
from shared.errors import FaultKind, classify
from tests.order_events import cancel_event, order_event, rejected_event, reserved_event

VERDICT_TOPIC = "inventory.reserved"


class FakeStates:
    """The transitions of :class:`services.email.order_state.OrderStates` in memory; the next
    ``failing_writes`` calls of ``end_*`` fail as an unreachable Redis does."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.failing_writes = 0

    async def begin_verdict(self, verdict: Verdict, order_id: str, claim_key: str) -> OrderState:
        before = self.states.get(order_id, "")
        state = OrderState(before.split("|", 1)[0])
        if state.is_cancelled or state in (verdict.sent, verdict.other_sent, verdict.other_sending):
            return state
        self.states[order_id] = f"{verdict.sending.value}|{claim_key}"
        return state

    async def end_verdict(self, verdict: Verdict, order_id: str) -> None:
        self._write()
        if self.states.get(order_id) not in (OrderState.CANCELLED, OrderState.CANCELLATION_SENT):
            self.states[order_id] = verdict.sent

    async def begin_cancellation(self, order_id: str) -> OrderState:
        before = self.states.get(order_id, "")
        if before != OrderState.CANCELLATION_SENT:
            self.states[order_id] = OrderState.CANCELLED
        return OrderState.NONE if "|" in before else OrderState(before)

    async def end_cancellation(self, order_id: str) -> None:
        self._write()
        self.states[order_id] = OrderState.CANCELLATION_SENT

    def _write(self) -> None:
        if self.failing_writes:
            self.failing_writes -= 1
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379")


class FakeSmtp:
    """One SMTP conversation: ``send_message`` returns at DATA's 250; ``quit_fails`` makes the
    closing QUIT fail as a timeout that cuts the handler there would."""

    def __init__(self, sent: list[EmailMessage], *, quit_fails: bool) -> None:
        self._sent = sent
        self._quit_fails = quit_fails

    async def __aenter__(self) -> FakeSmtp:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._quit_fails:
            raise TimeoutError("the handler's deadline passed during QUIT")

    async def send_message(self, message: EmailMessage) -> None:
        self._sent.append(message)


class CountingSender(ConfirmationSender):
    """The real handler with the SMTP server replaced by a list of what it accepted."""

    def __init__(self, states: FakeStates) -> None:
        super().__init__(EmailSettings(), states)  # type: ignore[arg-type]
        self.sent: list[EmailMessage] = []
        self.failing_quits = 0

    def _smtp(self) -> FakeSmtp:  # type: ignore[override]
        quit_fails = self.failing_quits > 0
        self.failing_quits -= quit_fails
        return FakeSmtp(self.sent, quit_fails=quit_fails)


def _delivery(event_id: str, event_type: str = "stock_reserved") -> Delivery:
    return Delivery(VERDICT_TOPIC, 0, 0, None, {}, event_id, f"idem:email:{event_type}:{event_id}")


async def test_a_redis_error_after_the_250_is_retried_as_the_record_not_the_send() -> None:
    states = FakeStates()
    sender = CountingSender(states)
    event, delivery = reserved_event(order_event()), _delivery("evt-1")
    states.failing_writes = 2

    for _ in range(2):
        with pytest.raises(RedisConnectionError) as failed:
            await sender.handle(event, delivery)
        assert classify(failed.value) is FaultKind.TRANSIENT  # the engine retries the attempt
    assert await sender.handle(event, delivery) == OUTCOME_SENT

    assert len(sender.sent) == 1
    assert states.states[event.order_id] == OrderState.CONFIRMED


async def test_a_cut_in_the_quit_after_the_250_does_not_send_again() -> None:
    states = FakeStates()
    sender = CountingSender(states)
    event, delivery = reserved_event(order_event()), _delivery("evt-6")
    sender.failing_quits = 1
    with pytest.raises(TimeoutError):
        await sender.handle(event, delivery)
    assert await sender.handle(event, delivery) == OUTCOME_SENT
    assert len(sender.sent) == 1


async def test_a_recorded_confirmation_is_never_sent_again() -> None:
    """A crash after the record and before ``done``: the redelivery (here, in a new process)
    finds ``confirmed`` and sends nothing."""
    states = FakeStates()
    event, delivery = reserved_event(order_event()), _delivery("evt-2")
    assert await CountingSender(states).handle(event, delivery) == OUTCOME_SENT

    restarted = CountingSender(states)
    assert await restarted.handle(event, delivery) == OUTCOME_SKIPPED_ALREADY_SENT
    assert restarted.sent == []


async def test_a_cancelled_order_gets_no_confirmation() -> None:
    states = FakeStates()
    event = reserved_event(order_event())
    states.states[event.order_id] = OrderState.CANCELLED
    sender = CountingSender(states)
    assert await sender.handle(event, _delivery("evt-3")) == OUTCOME_SKIPPED_CANCELLED
    assert sender.sent == []


async def test_a_cancellation_notice_is_recorded_like_a_confirmation() -> None:
    """A Redis error after the notice's 250 retries the record; a later delivery of the
    cancel (a replay after its dedup key expired) finds the record and sends nothing."""
    states = FakeStates()
    sender = CountingSender(states)
    created = order_event()
    cancel, delivery = cancel_event(created), _delivery("evt-4", "order_cancelled")
    states.failing_writes = 1
    with pytest.raises(RedisConnectionError):
        await sender.handle(cancel, delivery)
    assert await sender.handle(cancel, delivery) == OUTCOME_CANCELLATION_SENT
    assert await CountingSender(states).handle(cancel, delivery) == OUTCOME_SKIPPED_ALREADY_SENT
    assert await sender.handle(reserved_event(created), _delivery("evt-5")) == (
        OUTCOME_SKIPPED_CANCELLED
    )
    assert [m["Subject"] for m in sender.sent] == [f"Order {created.order_id} cancelled"]


async def test_a_rejected_order_gets_one_notice_naming_what_was_short() -> None:
    states = FakeStates()
    sender = CountingSender(states)
    rejected = rejected_event(order_event(sku="SKU-9", quantity=3))
    delivery = _delivery("evt-7", "stock_rejected")
    assert await sender.handle(rejected, delivery) == OUTCOME_REJECTION_SENT
    assert await CountingSender(states).handle(rejected, delivery) == OUTCOME_SKIPPED_ALREADY_SENT
    [notice] = sender.sent
    assert notice["Subject"] == f"Order {rejected.order_id} could not be fulfilled"
    assert notice["Message-ID"] == "<evt-7.order-rejected@outbox.local>"
    body = notice.get_content()
    assert "Not available: SKU-9" in body and "wanted 3" in body
    assert states.states[rejected.order_id] == OrderState.REJECTION_SENT


async def test_one_verdict_mail_per_order_whichever_verdict_comes_first() -> None:
    """Inventory gives one verdict per order; were a second, contrary one to arrive, the
    customer keeps hearing the first."""
    for first, second in ((reserved_event, rejected_event), (rejected_event, reserved_event)):
        states = FakeStates()
        sender = CountingSender(states)
        created = order_event()
        assert await sender.handle(first(created), _delivery("evt-a")) in (
            OUTCOME_SENT,
            OUTCOME_REJECTION_SENT,
        )
        assert await sender.handle(second(created), _delivery("evt-b")) == (
            OUTCOME_SKIPPED_OTHER_VERDICT
        )
        assert len(sender.sent) == 1


async def test_a_cancelled_order_gets_no_rejection_notice() -> None:
    states = FakeStates()
    sender = CountingSender(states)
    created = order_event()
    assert await sender.handle(cancel_event(created), _delivery("evt-c", "order_cancelled")) == (
        OUTCOME_CANCELLATION_SENT
    )
    assert await sender.handle(rejected_event(created), _delivery("evt-r")) == (
        OUTCOME_SKIPPED_CANCELLED
    )
    assert [m["Subject"] for m in sender.sent] == [f"Order {created.order_id} cancelled"]
