"""``python -m services.order`` as a real process on the embedded stack, for tests over a socket."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from stack import Stack
from stack.config import free_port
from tests.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class OrderProcess:
    process: asyncio.subprocess.Process
    base_url: str


@asynccontextmanager
async def order_process(stack: Stack, database: str, log_path: Path) -> AsyncIterator[OrderProcess]:
    """Start the order API on a free port against ``database``; yield it once /readyz says 200.

    Its stderr (JSON-lines logs) goes to ``log_path``. On exit a process the test left running
    gets SIGTERM (and is killed if it does not drain within 15 s).
    """
    port = free_port()
    env = {
        **os.environ,
        **stack.config.service_env(),
        # The bearer tokens it accepts: the stack's development issuer's, as `stack up` sets.
        **stack.config.auth_env(),
        "ORDER_PORT": str(port),
        "ORDER_DATABASE": database,
        "ORDER_DRAIN_SECONDS": "5",
    }
    base_url = f"http://127.0.0.1:{port}"
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
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:

                async def ready() -> bool:
                    try:
                        return (await http.get("/readyz")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(ready, timeout=60, message="order API process ready")
            yield OrderProcess(process=process, base_url=base_url)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=15)
                except TimeoutError:
                    process.kill()
                    await process.wait()
