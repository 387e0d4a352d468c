"""`python -m services.order.verdicts` as a process: it becomes ready on ORDER_VERDICTS_PORT,
moves an order on a verdict, on SIGTERM drains, commits its offsets and exits 0, and killed
mid-transition it moves the order once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
from bson import ObjectId

from shared.consumer import FAILPOINT_AFTER_SIDE_EFFECT
from shared.contracts import EVENT_STOCK_REJECTED, EVENT_STOCK_RESERVED
from shared.events import InventoryEvent
from stack import Stack
from stack.config import free_port
from tests.integration.order.conftest import Api, order_body
from tests.integration.order.verdict_world import rejected, reserved, verdict_world
from tests.waiting import wait_until

TIMEOUT = 60


async def _get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=3) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def _ready(port: int) -> bool:
    return (await _get(port, "/readyz")).status_code == 200


async def _status(api: Api, order_id: str) -> str:
    body: dict[str, Any] = (await api.http.get(f"/orders/{order_id}")).json()
    return str(body["status"])


async def test_the_process_consumes_and_on_sigterm_commits_and_exits_zero(
    stack: Stack, api: Api
) -> None:
    port = free_port()
    async with verdict_world(stack, api.settings.database) as world:
        env = {
            **os.environ,
            **stack.config.service_env(),
            **world.env(),
            "ORDER_VERDICTS_PORT": str(port),
        }
        # Two runs: the second starts from the offsets the first committed on SIGTERM.
        runs: list[tuple[Callable[[dict[str, Any]], InventoryEvent], str, str]] = [
            (reserved, "confirmed", EVENT_STOCK_RESERVED),
            (rejected, "rejected", EVENT_STOCK_REJECTED),
        ]
        for run, (make, status, event_type) in enumerate(runs):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.order.verdicts",
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_until(lambda: _ready(port), timeout=TIMEOUT, message="ready")
                created = await api.http.post("/orders", json=order_body())
                order = created.json()
                event_id = await world.send(make(order))
                await wait_until(
                    partial(world.done, event_type, event_id), timeout=TIMEOUT, message="handled"
                )
                assert await _status(api, order["id"]) == status
                metrics = (await _get(port, "/metrics")).text
                # Nothing of the first run came back: its offsets were committed.
                assert 'consumer_duplicates_skipped_total{service="order-verdicts"} 0.0' in metrics
                process.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(process.wait(), timeout=35) == 0, run
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


async def test_a_consumer_killed_after_moving_the_order_moves_it_once(
    stack: Stack, api: Api
) -> None:
    """Killed after the order's write, before `done` and the offset commit: the restarted
    process gets the verdict again, finds its event id in the order's history and changes
    nothing (the order's own backstop, the claim of the dead process having expired)."""
    async with verdict_world(stack, api.settings.database) as world:
        env = {**world.env(), "ORDER_VERDICTS_CLAIM_LEASE_SECONDS": "2"}
        order = (await api.http.post("/orders", json=order_body())).json()
        stack.start(
            "order-verdicts", env={**env, "ORDER_VERDICTS_FAILPOINT": FAILPOINT_AFTER_SIDE_EFFECT}
        )
        try:
            event_id = await world.send(reserved(order))
            await wait_until(
                lambda: not stack.is_running("order-verdicts"), timeout=TIMEOUT, message="crash"
            )
            assert await _status(api, order["id"]) == "confirmed"
            assert not await world.done(EVENT_STOCK_RESERVED, event_id)

            stack.start("order-verdicts", env=env)
            await wait_until(
                partial(world.done, EVENT_STOCK_RESERVED, event_id),
                timeout=TIMEOUT,
                message="redelivered and done",
            )
        finally:
            stack.stop("order-verdicts")
        stored = await api.db.orders.find_one({"_id": ObjectId(order["id"])})
        assert [(h["status"], h.get("eventId")) for h in stored["history"]] == [
            ("confirmed", event_id)
        ]
        assert await world.dlq(EVENT_STOCK_RESERVED) == []
