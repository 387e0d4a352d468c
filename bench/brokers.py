"""Brokers phase (issue 14): our capacity ramp with one Kafka broker and with three (RF 3).

For each broker count of ``plan.broker_counts`` a fresh embedded stack of its own (free ports,
its own temporary directory) is started with that many brokers, and our design's capacity ramp
(bench/capacity.py, the same rates, steps and cancellations) runs on it; then that stack is
stopped and wiped. Both counts get a fresh stack, so neither inherits the other's data or the
main stack's earlier phases; the main stack stays up, idle, meanwhile.

With three brokers every ``order.created`` record is written to three brokers and acknowledged
once two have it (``acks=all``, ``min.insync.replicas=2``), so the relay's publish and the
consumers' fetches do more work; on two shared cores the extra JVMs also take CPU from the
pipeline. The figure says what replication costs here, not what a cluster of three machines
would sustain (docs/benchmarks.md, "Scaling").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import capacity
from bench.run import Run
from shared.contracts import ALL_TOPICS
from shared.kafka import ensure_topics
from stack import INFRA, Stack, StackConfig
from stack.observe import wait_for_topics


async def ramp_with_brokers(run: Run, brokers: int) -> dict[str, Any]:
    """Our design's capacity ramp on a fresh stack with ``brokers`` brokers."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-brokers-{brokers}-"))
    stack = Stack(StackConfig.for_tests(root, kafka_brokers=brokers))
    sub = Run(stack, run.plan, f"{run.run_id}b{brokers}")
    sub.profile_dir = run.profile_dir / f"brokers_{brokers}" if run.profile_dir else None
    loadavg_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        await asyncio.to_thread(stack.up, INFRA)
        bootstrap = stack.config.kafka_bootstrap
        await ensure_topics(bootstrap, replication=stack.config.kafka_replication)
        await wait_for_topics(bootstrap, ALL_TOPICS, 60)
        ramp = await capacity.ramp(sub, "ours")
    finally:
        sub.observe_memory()
        sub.stop_all_own()
        await asyncio.to_thread(stack.down, True)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "brokers": brokers,
        "bootstrap_servers": len(bootstrap.split(",")),
        "loadavg_at_start": loadavg_at_start,
        **ramp,
        "memory": sub.memory.as_dict(),
    }


async def run_phase(run: Run) -> None:
    """The ramp once per broker count of ``plan.broker_counts``."""
    results: dict[str, Any] = {"step_seconds": run.plan.capacity_step_seconds}
    run.results["brokers"] = results
    for brokers in run.plan.broker_counts:
        ramp = await run.attempt(f"{brokers} broker(s)", None, ramp_with_brokers(run, brokers))
        if ramp is None:
            continue  # recorded in ``failures``; the other count still runs
        results[str(brokers)] = ramp
        print(f"brokers {brokers}: capacity {ramp['capacity_orders_per_s']}/s", flush=True)
