"""The API never talks to Kafka: a stopped broker changes nothing for it."""

from __future__ import annotations

from stack import Stack
from tests.integration.order.conftest import Api, order_body


async def test_orders_are_accepted_while_kafka_is_stopped(api: Api, stack: Stack) -> None:
    stack.stop("kafka")
    try:
        responses = [await api.http.post("/orders", json=order_body()) for _ in range(3)]
        ready = await api.http.get("/readyz")
    finally:
        stack.start("kafka")

    assert [r.status_code for r in responses] == [201, 201, 201]
    assert ready.status_code == 200
    assert await api.counts() == (3, 3)
    pending = await api.outbox.count_documents({"status": "Pending"})
    assert pending == 3
