"""``python -m services.order`` as a real process: serves over a socket, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from stack import Stack
from tests.integration.order.conftest import DEFAULT_USER, TEST_DATABASE, bearer, order_body
from tests.integration.order.order_process import order_process


async def test_order_api_process_serves_orders_and_exits_0_on_sigterm(
    stack: Stack, tmp_path: Path
) -> None:
    log_path = tmp_path / "order.log"
    async with order_process(stack, TEST_DATABASE, log_path) as api:
        authorization = bearer(stack, DEFAULT_USER)["Authorization"]
        async with httpx.AsyncClient(
            base_url=api.base_url, timeout=10, headers={"Authorization": authorization}
        ) as http:
            created = await http.post("/orders", json=order_body())
            assert created.status_code == 201, created.text
            fetched = await http.get(created.headers["location"])
            assert fetched.status_code == 200
            assert fetched.json()["events"][0]["status"] == "Pending"

        api.process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(api.process.wait(), timeout=15)
        assert returncode == 0
    # JSON-lines logging, uvicorn's own records included; the token in none of them.
    logged = log_path.read_text()
    assert '"service": "order"' in logged
    assert authorization.rsplit(".", 1)[1] not in logged


async def test_over_a_socket_two_authorization_headers_or_a_huge_one_are_400(
    stack: Stack, tmp_path: Path
) -> None:
    # What the in-process tests show, through uvicorn: both headers reach the check (none is
    # dropped or merged on the way), and 100 KB of header is answered by the check, not by a
    # server limit with another body.
    two = [
        ("Authorization", bearer(stack, DEFAULT_USER)["Authorization"]),
        ("Authorization", bearer(stack, "someone-else")["Authorization"]),
    ]
    huge = [("Authorization", "Bearer eyJ" + "A" * 100_000)]
    async with (
        order_process(stack, TEST_DATABASE, tmp_path / "order.log") as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=10) as http,
    ):
        answers = [
            await http.post("/orders", json=order_body(), headers=headers)
            for headers in (two, huge)
        ]

    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_request"')
        assert answer.json()["error"] == "invalid_request"
