"""``python -m services.order`` as a real process: serves over a socket, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

from stack import Stack
from stack.config import free_port
from tests.integration.order.conftest import TEST_DATABASE, order_body
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]


async def test_order_api_process_serves_orders_and_exits_0_on_sigterm(
    stack: Stack, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        **stack.config.service_env(),
        "ORDER_PORT": str(port),
        "ORDER_DATABASE": TEST_DATABASE,
        "ORDER_DRAIN_SECONDS": "5",
    }
    log_path = tmp_path / "order.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.order",
            cwd=REPO_ROOT,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

                async def ready() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await wait_until(ready, timeout=30, message="order API process ready")
                created = await http.post("/orders", json=order_body())
                assert created.status_code == 201, created.text
                fetched = await http.get(created.headers["location"])
                assert fetched.status_code == 200
                assert fetched.json()["events"][0]["status"] == "Pending"

            process.send_signal(signal.SIGTERM)
            returncode = await asyncio.wait_for(process.wait(), timeout=15)
            assert returncode == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    # JSON-lines logging, uvicorn's own records included.
    assert '"service": "order"' in log_path.read_text()
