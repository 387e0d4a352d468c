"""Faults that leave the process alive: pause/resume (SIGSTOP/SIGCONT) and a slowed, cut or
black-holed link through the stack's fault proxy (Toxiproxy), plus the probes that prove a
fault hit what it was meant to hit (a Kafka transaction open at the instant of the fault).

Everything the stack does is synchronous; these helpers run it in a thread so the load keeps
flowing while a fault is injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.health import READY_TIMEOUT_SECONDS
from shared.kafka import REQUEST_TIMEOUT_MS
from stack.observe import topic_partitions
from stack.toxiproxy import Toxiproxy
from tests.e2e.chaos.harness import Chaos
from tests.e2e.chaos.invariants import Evaluation
from tests.waiting import wait_until

T = TypeVar("T")


async def in_thread(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


def proxy(chaos: Chaos) -> Toxiproxy:
    return chaos.pipeline.stack.toxiproxy()


async def pause(chaos: Chaos, instance: str) -> None:
    await in_thread(chaos.pipeline.stack.pause, instance)


async def resume(chaos: Chaos, instance: str) -> None:
    await in_thread(chaos.pipeline.stack.resume, instance)


async def start_proxied(
    chaos: Chaos,
    instance: str,
    servers: Iterable[str],
    extra: Mapping[str, str] | None = None,
) -> None:
    """(Re)start ``instance`` reaching ``servers`` through the fault proxy (the rest direct)."""
    servers = list(servers)
    if chaos.pipeline.is_running(instance):
        await chaos.pipeline.stop(instance)
    env = {**chaos.pipeline.stack.config.proxied_env(servers), **(extra or {})}
    await chaos.pipeline.start(instance, env)
    chaos.note(f"{instance} started through the fault proxy to {', '.join(servers)}")


async def metric(chaos: Chaos, instance: str, name: str, *, within: float = 15.0) -> float:
    """A counter or gauge of ``instance`` (0 when absent), asked again within ``within`` when
    the health port is slow (a partitioned relay's once took over 2 s on a loaded machine; a
    scrape no longer runs the readiness checks, the HTTP timeout keeps its old room anyway)."""
    found: list[float] = []

    async def read() -> bool:
        value = await chaos.metric(instance, name, http_timeout=READY_TIMEOUT_SECONDS + 2)
        found[:] = [value or 0.0]
        return True

    await wait_until(read, timeout=within, interval=0.2, message=f"{instance} {name}")
    return found[0]


async def is_leader(chaos: Chaos, instance: str) -> bool:
    return await chaos.metric(instance, "relay_is_leader") == 1.0


async def wait_leader(chaos: Chaos, instance: str, *, within: float = 20.0) -> None:
    await wait_until(
        lambda: is_leader(chaos, instance),
        timeout=within,
        interval=0.1,
        message=f"{instance} to lead",
    )


def judge(chaos: Chaos, evaluation: Evaluation, problems: list[str], *, evidence: str) -> None:
    """Fail the scenario on the invariants' violations and on ``problems`` of its own, all of
    them recorded in the report row."""
    chaos.result.violations += problems
    broken = evaluation.violations + problems
    if broken:
        raise AssertionError(
            f"{chaos.name}: {len(broken)} guarantee(s) broken:\n  "
            + "\n  ".join(broken)
            + (f"\nevidence:\n{evidence}" if problems else "")
        )


def log_size(chaos: Chaos, instance: str) -> int:
    path = chaos.pipeline.stack.logs_path(instance)
    return path.stat().st_size if path.exists() else 0


def log_since(chaos: Chaos, instance: str, offset: int) -> str:
    path = chaos.pipeline.stack.logs_path(instance)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


class OpenTransaction:
    """Records on ``topics`` written inside a Kafka transaction that is still open.

    A partition's last stable offset (what a ``read_committed`` consumer may read up to) stays
    below its high watermark while a transaction that wrote there is neither committed nor
    aborted: the difference is exactly the in-flight batch of a transactional producer.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self._topics = list(topics)
        self._tps: list[TopicPartition] = []
        self._consumers = {
            level: AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                enable_auto_commit=False,
                isolation_level=level,
                request_timeout_ms=REQUEST_TIMEOUT_MS,
            )
            for level in ("read_committed", "read_uncommitted")
        }

    async def __aenter__(self) -> OpenTransaction:
        for consumer in self._consumers.values():
            await consumer.start()
        for topic in self._topics:
            self._tps += await topic_partitions(self._consumers["read_committed"], topic)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for consumer in self._consumers.values():
            await consumer.stop()

    async def ranges(self) -> dict[tuple[str, int], range]:
        """Per (topic, partition), the offsets written by a transaction still open right now."""
        # The high watermark first: a commit between the two reads can then only make a range
        # smaller (a miss, retried), never show a transaction that was not open.
        high = await self._consumers["read_uncommitted"].end_offsets(self._tps)
        stable = await self._consumers["read_committed"].end_offsets(self._tps)
        return {
            (tp.topic, tp.partition): range(stable[tp], high[tp])
            for tp in self._tps
            if high[tp] > stable[tp]
        }

    async def records(self) -> int:
        """How many records sit in open transactions right now (0: none open)."""
        return sum(len(offsets) for offsets in (await self.ranges()).values())
