"""The email handler's promise between SMTP's 250 and Redis, on fakes: once the mail left, no
retry, redelivery or replay sends it again; a failed write after the 250 is retried as a write."""

from __future__ import annotations

from email.message import EmailMessage

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from services.email.handlers import (
    OUTCOME_CANCELLATION_SENT,
    OUTCOME_SENT,
    OUTCOME_SKIPPED_ALREADY_SENT,
    OUTCOME_SKIPPED_CANCELLED,
    ConfirmationSender,
)
from services.email.order_state import OrderState
from services.email.settings import EmailSettings
from shared.consumer import Delivery
from shared.errors import FaultKind, classify
from tests.order_events import cancel_event, order_event

ORDER_TOPIC = "order.created"


class FakeStates:
    """The transitions of :class:`services.email.order_state.OrderStates` in memory; the next
    ``failing_writes`` calls of ``end_confirmation`` fail as an unreachable Redis does."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.failing_writes = 0

    async def begin_confirmation(self, order_id: str, claim_key: str) -> OrderState:
        before = self.states.get(order_id, "")
        if before in (OrderState.CANCELLED, OrderState.CONFIRMED):
            return OrderState(before)
        self.states[order_id] = f"confirming|{claim_key}"
        return OrderState.CONFIRMING if before.startswith("confirming|") else OrderState(before)

    async def end_confirmation(self, order_id: str) -> None:
        self._write()
        if self.states.get(order_id) not in (OrderState.CANCELLED, OrderState.CANCELLATION_SENT):
            self.states[order_id] = OrderState.CONFIRMED

    async def begin_cancellation(self, order_id: str) -> OrderState:
        before = self.states.get(order_id, "")
        if before != OrderState.CANCELLATION_SENT:
            self.states[order_id] = OrderState.CANCELLED
        return OrderState.NONE if before.startswith("confirming|") else OrderState(before)

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


def _delivery(event_id: str, event_type: str = "order_created") -> Delivery:
    return Delivery(ORDER_TOPIC, 0, 0, None, {}, event_id, f"idem:email:{event_type}:{event_id}")


async def test_a_redis_error_after_the_250_is_retried_as_the_record_not_the_send() -> None:
    states = FakeStates()
    sender = CountingSender(states)
    event, delivery = order_event(), _delivery("evt-1")
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
    event, delivery = order_event(), _delivery("evt-6")
    sender.failing_quits = 1
    with pytest.raises(TimeoutError):
        await sender.handle(event, delivery)
    assert await sender.handle(event, delivery) == OUTCOME_SENT
    assert len(sender.sent) == 1


async def test_a_recorded_confirmation_is_never_sent_again() -> None:
    """A crash after the record and before ``done``: the redelivery (here, in a new process)
    finds ``confirmed`` and sends nothing."""
    states = FakeStates()
    event, delivery = order_event(), _delivery("evt-2")
    assert await CountingSender(states).handle(event, delivery) == OUTCOME_SENT

    restarted = CountingSender(states)
    assert await restarted.handle(event, delivery) == OUTCOME_SKIPPED_ALREADY_SENT
    assert restarted.sent == []


async def test_a_cancelled_order_gets_no_confirmation() -> None:
    states = FakeStates()
    event = order_event()
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
    assert await sender.handle(created, _delivery("evt-5")) == OUTCOME_SKIPPED_CANCELLED
    assert [m["Subject"] for m in sender.sent] == [f"Order {created.order_id} cancelled"]
