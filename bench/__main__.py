"""``python -m bench [--quick]``: one benchmark run on one fresh embedded stack.

Phases, in order (each bounded in count and time; a phase that fails is reported as failed and
the run goes on, so one broken part never hides the others' figures):

1. raw PyMongo two-insert transaction and the order API, both at concurrency 32;
2. relay drain of a backlog built with the relay stopped, the raw aiokafka producer on the same
   messages, and the article's relay on the same backlog;
3. each consumer's drain rate from a backlog, and its Redis round trips per message;
4. end-to-end latency at a steady 50% of the API's measured maximum: this system, then the
   article's design (its relay and its consumer) at the same rate;
5. peak resident memory of every process (read before each stop and at the end).

Only 127.0.0.1 is ever contacted. The stack lives in a temporary directory and is wiped at the
end (``--keep`` keeps it for a look at the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo.errors import PyMongoError

from bench import profiling, report
from bench.article_consumer import (
    ArticleConsumerConfig,
    ArticleConsumerStats,
    run_article_consumer,
)
from bench.e2e_latency import LatencyResult, measure_e2e, order_body, seed_bench_stock
from bench.memory import PeakMemory
from shared.contracts import ALL_TOPICS, ORDER_CREATED_TOPIC, OutboxStatus
from shared.kafka import ensure_topics
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import INFRA, Stack, StackConfig
from stack.config import REPO_ROOT

# E2E figures: steady load at this share of the measured maximum API rate (the 50%).
LOAD_SHARE: Final = 0.5
# A second, light load run at the same fixed rate for both designs: at 50% of the API's maximum
# the whole pipeline (API, relay, inventory) shares one Python MongoDB server and two cores and
# saturates, so that run measures queueing; this one measures the designs' own latency.
LIGHT_RATE: Final = 5.0
SUBPROCESS_READY_TIMEOUT: Final = 60.0
SUBPROCESS_STOP_TIMEOUT: Final = 20.0


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of one run; ``--quick`` shrinks everything for a smoke run."""

    backlog: int
    article_backlog: int
    latency_events: int
    relay_timeout_seconds: float
    article_timeout_seconds: float
    consumer_backlog: int
    consumer_timeout_seconds: float
    throughput_seconds: float
    e2e_seconds: float
    e2e_warmup_seconds: float
    settle_seconds: float

    @classmethod
    def full(cls) -> Plan:
        return cls(
            backlog=20_000,
            # The article's relay moves at most 100 events/s by design: 2,000 give its rate in
            # ~20 s; a 20,000 backlog would take over three minutes to say the same thing.
            article_backlog=2_000,
            latency_events=200,
            relay_timeout_seconds=90.0,
            article_timeout_seconds=20.0,
            consumer_backlog=1_000,
            consumer_timeout_seconds=45.0,
            throughput_seconds=10.0,
            e2e_seconds=15.0,
            e2e_warmup_seconds=3.0,
            settle_seconds=30.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            backlog=2_000,
            article_backlog=300,
            latency_events=40,
            relay_timeout_seconds=30.0,
            article_timeout_seconds=8.0,
            consumer_backlog=300,
            consumer_timeout_seconds=30.0,
            throughput_seconds=4.0,
            e2e_seconds=6.0,
            e2e_warmup_seconds=1.0,
            settle_seconds=20.0,
        )


class Run:
    """State of one benchmark run: the stack, the results, the processes we spawned."""

    def __init__(self, stack: Stack, plan: Plan, run_id: str) -> None:
        self.stack = stack
        self.plan = plan
        self.run_id = run_id
        self.memory = PeakMemory()
        self.results: dict[str, Any] = {"errors": {}, "phase_seconds": {}}
        self._own: dict[str, subprocess.Popen[bytes]] = {}
        self.profile_dir: Path | None = None
        self._profiling: dict[str, list[profiling.Recorder]] = {}

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    # -- bench-owned processes (the article's relay and consumer) -------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.config.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env={**os.environ, **self.config.service_env(), **env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._own[name] = proc
        return proc

    def own_pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self._own.items() if p.poll() is None}

    def stop_own(self, name: str) -> None:
        proc = self._own.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        self.memory.observe({name: proc.pid})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(SUBPROCESS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_all_own(self) -> None:
        for name in list(self._own):
            self.stop_own(name)

    # -- profiles (--profile) ------------------------------------------------------------------
    def start_profile(self, label: str, seconds: float | None) -> list[profiling.Recorder]:
        """py-spy every Python process of the run (and this one) for ``seconds`` (or until
        :meth:`finish_profile`); nothing without ``--profile``."""
        if self.profile_dir is None:
            return []
        pids = {**self.stack.pids(), **self.own_pids(), "bench": os.getpid()}
        targets = {n: p for n, p in pids.items() if n not in ("kafka", "redis")}
        recorders = profiling.start(targets, seconds, self.profile_dir / label)
        self._profiling[label] = recorders
        return recorders

    async def finish_profile(self, label: str, recorders: list[profiling.Recorder]) -> None:
        self._profiling.pop(label, None)
        if recorders:
            summaries = await asyncio.to_thread(profiling.finish, recorders, 30.0)
            self.results.setdefault("profiles", {})[label] = summaries

    async def finish_all_profiles(self) -> None:
        """Stop recorders a failed phase left running (and keep what they recorded)."""
        for label, recorders in list(self._profiling.items()):
            await self.finish_profile(label, recorders)

    # -- services of the stack ---------------------------------------------------------------------
    def observe_memory(self) -> None:
        self.memory.observe(self.stack.pids())
        self.memory.observe(self.own_pids())

    def stop_service(self, name: str) -> None:
        self.observe_memory()
        self.stack.stop(name)

    async def start_service(self, name: str, env: dict[str, str]) -> None:
        await asyncio.to_thread(self.stack.start, name, env)


# -- helpers ------------------------------------------------------------------------------------
async def position_group_at_end(bootstrap: str, group: str, topic: str) -> None:
    """Commit the current end offsets for ``group``: a consumer of that group then starts with
    what is produced from now on, not with the history earlier phases left in the topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await asyncio.wait_for(_partitions(consumer, topic), timeout=15)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.commit({tp: ends[tp] for tp in tps})
    finally:
        await consumer.stop()


async def wait_for_topics(bootstrap: str, topics: list[str], limit: float) -> None:
    """Until the broker's metadata lists every topic with its partitions (a topic just created
    is not yet known to a producer's first metadata fetch)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        for topic in topics:
            await asyncio.wait_for(_partitions(consumer, topic), timeout=limit)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await consumer._client.force_metadata_update()  # the first metadata fetch is lazy
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.2)  # poll interval; the caller bounds the whole wait


async def wait_for_file(path: Path, proc: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):  # noqa: ASYNC240 - one stat per 100 ms, not worth a thread
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} not written within {limit:.0f} s")
        await asyncio.sleep(0.1)  # poll interval, bounded by the deadline


async def closed_loop_api_rate(api_url: str, concurrency: int, seconds: float) -> float:
    """Orders/s the API sustains with ``concurrency`` clients posting back to back.

    Only used when the order helper's ``bench.order_api`` did not produce a figure: the
    end-to-end phase needs a maximum to take 50% of.
    """
    done = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=10.0, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal done
            n = w
            while time.monotonic() < deadline:
                response = await client.post("/orders", json=order_body(n))
                if response.status_code == 201:
                    done += 1
                n += concurrency

        started = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.monotonic() - started
    return round(done / elapsed, 1)


async def phase(run: Run, name: str, body: Callable[[], Awaitable[None]]) -> None:
    """Run one phase; record its duration, and its error instead of aborting the whole run."""
    started = time.monotonic()
    print(f"--- {name} ...", flush=True)
    try:
        await body()
    except Exception as exc:
        run.results["errors"][name] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        await run.finish_all_profiles()
        elapsed = round(time.monotonic() - started, 1)
        run.results["phase_seconds"][name] = elapsed
        print(f"--- {name} done in {elapsed} s", flush=True)


# -- phases -------------------------------------------------------------------------------------
async def phase_order_api(run: Run) -> None:
    """Raw two-insert transaction, then the API as a stack service, both at concurrency 32."""
    from bench import order_api

    cfg = run.config
    seconds = run.plan.throughput_seconds
    run.results["raw_txn"] = await asyncio.wait_for(
        order_api.measure_raw_txn(cfg.mongo_uri, seconds), timeout=seconds + 60
    )
    await run.start_service("order", {"ORDER_DATABASE": order_api.API_DATABASE})
    try:
        api_url = f"http://127.0.0.1:{cfg.port_of('order')}"
        recorders = run.start_profile("api", None)
        run.results["api"] = await asyncio.wait_for(
            order_api.measure_api(api_url, seconds), timeout=seconds + 60
        )
        await run.finish_profile("api", recorders)
    finally:
        run.stop_service("order")


async def drain_bounded(
    client: MongoClient,
    database: str,
    backlog: int,
    limit: float,
    runner: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    progress: Callable[[], Awaitable[int]] | None = None,
) -> dict[str, Any]:
    """Run ``runner`` on a seeded outbox until no event is Pending or ``limit`` seconds passed.

    The rate is what drained over the time it took, so a drain cut short by the limit still
    yields a measured figure (marked ``complete: false``). The Pending count is polled once a
    second: the profile showed that polling it every 200 ms cost the server a fifth of its time.
    ``progress`` (events drained so far) replaces that count when the runner can tell.
    """
    outbox = client[database][OUTBOX_COLLECTION]
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(runner(stop))
    remaining = backlog
    try:
        while time.perf_counter() - started < limit:
            # Poll interval of the drain check, bounded by ``limit``: the in-process counter is
            # free to read, the server-side count is not.
            await asyncio.sleep(0.1 if progress is not None else 1.0)
            if task.done():
                task.result()
                raise RuntimeError("the relay stopped before the backlog drained")
            if progress is not None:
                remaining = backlog - await progress()
            else:
                remaining = await outbox.count_documents({"status": OutboxStatus.PENDING.value})
            if remaining <= 0:
                break
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    drained = backlog - remaining
    return {
        "events_per_s": round(drained / elapsed, 1),
        "drained": drained,
        "backlog": backlog,
        "seconds": round(elapsed, 1),
        "complete": remaining == 0,
    }


async def _drop_quietly(client: MongoClient, database: str) -> None:
    """Cleanup only: a slow drop must not cost the next measurement its figure."""
    try:
        await asyncio.wait_for(client.drop_database(database), 60)
    except (TimeoutError, PyMongoError) as exc:
        print(f"(cleanup: could not drop {database}: {exc!r})", flush=True)


async def phase_relay(run: Run) -> None:
    """Raw producer, our relay and the article's relay on the same kind of backlog, then the
    relay's commit-to-publish latency at light load. Backlogs and records are the relay
    helper's (``bench.relay_drain``); the drains are time-bounded here."""
    from bench import article_relay, relay_drain
    from services.relay.main import Relay
    from shared.outbox import ensure_outbox_indexes
    from shared.settings import InfraSettings

    cfg = run.config
    plan = run.plan
    infra = InfraSettings(mongo_uri=cfg.mongo_uri, kafka_bootstrap_servers=cfg.kafka_bootstrap)
    client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-relay")
    ttl_seconds = relay_drain.relay_settings(infra, "unused").outbox_published_ttl_seconds
    # The relay helper's module may publish to a topic of its own: create it like its main does.
    own_topic = getattr(relay_drain, "BENCH_TOPIC", None)
    if isinstance(own_topic, str):
        await ensure_topics(cfg.kafka_bootstrap, [own_topic])
        await wait_for_topics(cfg.kafka_bootstrap, [own_topic], 60)
    try:
        docs = [relay_drain.make_event() for _ in range(plan.backlog)]
        raw = await asyncio.wait_for(relay_drain.bench_raw(cfg.kafka_bootstrap, docs), 120)
        run.results["raw_producer"] = {"msgs_per_s": round(raw, 1), "messages": plan.backlog}

        database = f"bench_relay_{run.run_id}"
        seeded = time.perf_counter()
        # Indexes first, as in production (the order API creates them before any event exists).
        # Without this the relay's start-up builds them over the whole backlog, and the first
        # full profile showed that index build was 52% of the server's time in the "drain".
        await ensure_outbox_indexes(client[database][OUTBOX_COLLECTION], ttl_seconds)
        await asyncio.wait_for(relay_drain.seed(client, database, plan.backlog), 300)
        seed_seconds = round(time.perf_counter() - seeded, 1)
        relay_under_test = Relay(relay_drain.relay_settings(infra, database), client)

        async def published() -> int:
            # The relay's own counter: no query against the server being measured.
            value = relay_under_test.metrics.registry.get_sample_value("relay_published_total")
            return int(value or 0)

        recorders = run.start_profile("relay_drain", None)
        relay = await drain_bounded(
            client,
            database,
            plan.backlog,
            plan.relay_timeout_seconds,
            relay_under_test.run,
            published,
        )
        await run.finish_profile("relay_drain", recorders)
        run.results["relay"] = {**relay, "seed_seconds": seed_seconds}
        await _drop_quietly(client, database)

        database = f"bench_article_relay_{run.run_id}"
        await ensure_outbox_indexes(client[database][OUTBOX_COLLECTION], ttl_seconds)
        await asyncio.wait_for(relay_drain.seed(client, database, plan.article_backlog), 120)
        article = await drain_bounded(
            client,
            database,
            plan.article_backlog,
            plan.article_timeout_seconds,
            lambda stop: article_relay.run(
                client[database][OUTBOX_COLLECTION], cfg.kafka_bootstrap, stop
            ),
        )
        run.results["article_relay"] = {
            **article,
            "note": "at most 50 events per 500 ms round by construction",
        }
        await _drop_quietly(client, database)

        latency = await asyncio.wait_for(
            relay_drain.bench_latency(infra, client, plan.latency_events),
            plan.latency_events * 0.05 + 60,
        )
        run.results["relay"].update(
            {
                "commit_to_publish_p50_ms": round(latency["p50_ms"], 1),
                "commit_to_publish_p99_ms": round(latency["p99_ms"], 1),
                "latency_events": plan.latency_events,
            }
        )
    finally:
        await client.close()


async def phase_consumers(run: Run) -> None:
    """Each consumer's drain rate from one backlog on a private topic (the consumers helper's
    ``produce_backlog``/``drain``), then the article's consumer on the same backlog."""
    from bench import consumers_drain
    from services.email.handlers import make_sender
    from services.email.settings import EmailSettings
    from services.inventory.handlers import ReservationHandler
    from services.inventory.models import STOCK, ensure_indexes
    from services.inventory.settings import InventorySettings
    from shared.contracts import TOPIC_PARTITIONS, dlq_topic_for
    from shared.redis import make_redis

    cfg = run.config
    events = run.plan.consumer_backlog
    topic = f"bench.consumers.{run.run_id}"
    database = f"bench_cons_inv_{run.run_id}"
    await ensure_topics(cfg.kafka_bootstrap, [topic, dlq_topic_for(topic)], TOPIC_PARTITIONS)
    await wait_for_topics(cfg.kafka_bootstrap, [topic], 60)
    await asyncio.wait_for(consumers_drain.produce_backlog(cfg.kafka_bootstrap, topic, events), 120)
    mongo = make_mongo_client(cfg.mongo_uri, 30.0, "bench-consumers")
    # The email handler's per-order state (confirmation vs cancellation) lives in Redis.
    states_redis = make_redis(cfg.redis_url)
    figures: dict[str, Any] = {"backlog": events, "topic_partitions": TOPIC_PARTITIONS}
    limit = run.plan.consumer_timeout_seconds
    try:
        await ensure_indexes(mongo, database)
        await mongo[database][STOCK].insert_many(
            [{"sku": f"SKU-{n}", "available": 10 * events} for n in range(1, 6)]
        )
        common: dict[str, Any] = {"topic": topic, "port": 0}
        inventory = InventorySettings(
            group_id=f"bench-inv-{run.run_id}", database=database, **common
        )
        email = EmailSettings(group_id=f"bench-email-{run.run_id}", **common)
        plan: list[tuple[str, Any, Any]] = [
            ("inventory", inventory, ReservationHandler(mongo, database).handle),
            ("email", email, make_sender(email, states_redis).handle),
        ]
        for name, settings, handler in plan:
            recorders = run.start_profile(f"consumer_{name}", None)
            figures[name] = await consumer_drain_bounded(
                settings, f"bench-{name}-{run.run_id}", handler, cfg.redis_url, events, limit
            )
            await run.finish_profile(f"consumer_{name}", recorders)
        figures["article"] = await _article_consumer_drain(run, topic, events, limit)
    finally:
        run.results["consumers"] = figures
        await mongo.drop_database(database)
        await mongo.close()
        await states_redis.aclose()


async def consumer_drain_bounded(
    settings: Any, service: str, handler: Any, redis_url: str, events: int, limit: float
) -> dict[str, Any]:
    """One consumer service's loop (``IdempotentConsumer``, its real handler) on the backlog,
    until it handled ``events`` or ``limit`` seconds passed; the rate is over what it handled,
    from the first finished record (the group join is reported separately)."""
    from shared.consumer import IdempotentConsumer
    from shared.events import parse_order_created
    from shared.redis import make_redis

    redis = make_redis(redis_url)
    consumer = IdempotentConsumer(
        settings, service=service, redis=redis, parse=parse_order_created, handler=handler
    )

    def handled() -> int:
        total = 0.0
        for metric in consumer.metrics.registry.collect():
            if metric.name == "consumer_messages_processed":
                total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
        return int(total)

    stop = asyncio.Event()
    started = time.perf_counter()
    first: float | None = None
    task = asyncio.create_task(consumer.run(stop))
    try:
        while (count := handled()) < events and time.perf_counter() - started < limit:
            if first is None and count > 0:
                first = time.perf_counter()
            if task.done():
                task.result()
                raise RuntimeError(f"{service}: consumer stopped early")
            await asyncio.sleep(0.05)  # polling an in-process counter, bounded by ``limit``
        finished = time.perf_counter()
        count = handled()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await redis.aclose()
    first = first or started
    return {
        "msgs_per_s": round(count / max(finished - first, 1e-9), 1),
        "handled": count,
        "complete": count >= events,
        "join_seconds": round(first - started, 2),
        "redis_round_trips_per_msg": round(consumer.store.round_trips / max(1, count), 3),
    }


async def _article_consumer_drain(
    run: Run, topic: str, events: int, limit: float
) -> dict[str, Any]:
    """The article's consumer (both side effects, one message at a time) on the same backlog."""
    from services.email.settings import EmailSettings

    cfg = run.config
    database = f"bench_cons_art_{run.run_id}"
    await seed_bench_stock(cfg.mongo_uri, database)
    config = ArticleConsumerConfig(
        bootstrap=cfg.kafka_bootstrap,
        mongo_uri=cfg.mongo_uri,
        redis_url=cfg.redis_url,
        group=f"bench-article-drain-{run.run_id}",
        topic=topic,
        database=database,
        offset_reset="earliest",
    )
    stats = ArticleConsumerStats()
    stop = asyncio.Event()
    complete = True
    try:
        await asyncio.wait_for(
            run_article_consumer(config, EmailSettings(), stop, stats=stats, limit=events), limit
        )
    except TimeoutError:
        complete = False  # the rate so far is still a measured rate; say it was cut short
    finally:
        client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-cleaner")
        await client.drop_database(database)
        await client.close()
    return {
        "msgs_per_s": round(stats.rate(), 1),
        "handled": stats.processed,
        "complete": complete,
        "redis_round_trips_per_msg": round(stats.redis_round_trips / max(1, stats.processed), 3),
        "note": "inventory and email side effects in one sequential consumer (the article's)",
    }


async def phase_e2e_ours(run: Run) -> None:
    cfg = run.config
    orders_db, inventory_db = f"bench_e2e_orders_{run.run_id}", f"bench_e2e_inv_{run.run_id}"
    inv_group, email_group = f"bench-inv-{run.run_id}", f"bench-email-{run.run_id}"
    await seed_bench_stock(cfg.mongo_uri, inventory_db)
    for group in (inv_group, email_group):
        await asyncio.wait_for(
            position_group_at_end(cfg.kafka_bootstrap, group, ORDER_CREATED_TOPIC), 60
        )
    await run.start_service("order", {"ORDER_DATABASE": orders_db})
    await run.start_service(
        "relay",
        {"RELAY_DATABASE": orders_db, "RELAY_TRANSACTIONAL_ID": f"bench-relay-{run.run_id}"},
    )
    await run.start_service(
        "inventory", {"INVENTORY_DATABASE": inventory_db, "INVENTORY_GROUP_ID": inv_group}
    )
    await run.start_service("email", {"EMAIL_GROUP_ID": email_group})
    try:
        api_url = f"http://127.0.0.1:{cfg.port_of('order')}"
        rate = await _e2e_rate(run, api_url)
        result = await _e2e(run, "ours", api_url, inventory_db, rate)
        run.results.setdefault("e2e", {})["ours"] = asdict(result)
        light = await _e2e(run, "ours", api_url, inventory_db, LIGHT_RATE)
        run.results["e2e"]["ours_light"] = asdict(light)
    finally:
        for name in ("email", "inventory", "relay", "order"):
            run.stop_service(name)


async def phase_e2e_article(run: Run) -> None:
    cfg = run.config
    rate = run.results.get("e2e_rate")
    if not isinstance(rate, int | float):
        raise RuntimeError("no e2e rate: the API maximum was not measured")
    orders_db, inventory_db = f"bench_art_orders_{run.run_id}", f"bench_art_inv_{run.run_id}"
    group = f"bench-article-{run.run_id}"
    await seed_bench_stock(cfg.mongo_uri, inventory_db)
    await asyncio.wait_for(
        position_group_at_end(cfg.kafka_bootstrap, group, ORDER_CREATED_TOPIC), 60
    )
    await run.start_service("order", {"ORDER_DATABASE": orders_db})
    ready = cfg.root / f"article-consumer-{run.run_id}.ready"
    try:
        consumer = run.spawn(
            "article-consumer",
            [str(cfg.python), "-m", "bench.article_consumer", "--group", group,
             "--database", inventory_db, "--offset-reset", "earliest", "--ready-file", str(ready)],
            {},
        )  # fmt: skip
        run.spawn(
            "article-relay",
            [str(cfg.python), "-m", "bench.article_relay_process", "--database", orders_db],
            {},
        )
        await wait_for_file(ready, consumer, SUBPROCESS_READY_TIMEOUT)
        api_url = f"http://127.0.0.1:{cfg.port_of('order')}"
        result = await _e2e(run, "article", api_url, inventory_db, rate)
        run.results.setdefault("e2e", {})["article"] = asdict(result)
        light = await _e2e(run, "article", api_url, inventory_db, LIGHT_RATE)
        run.results["e2e"]["article_light"] = asdict(light)
    finally:
        run.stop_all_own()
        run.stop_service("order")


async def _e2e_rate(run: Run, api_url: str) -> float:
    api_max = report.get(run.results, "api", "orders_per_s")
    if not isinstance(api_max, int | float) or api_max <= 0:
        seconds = min(run.plan.throughput_seconds, 5.0)
        api_max = await closed_loop_api_rate(api_url, 32, seconds)
        run.results["api_max_fallback"] = {
            "orders_per_s": api_max,
            "note": "closed-loop c=32 against the e2e API (bench.order_api gave no figure)",
        }
    rate = round(float(api_max) * LOAD_SHARE, 1)
    run.results["e2e_rate"] = rate
    return rate


async def _e2e(
    run: Run, design: str, api_url: str, inventory_db: str, rate: float
) -> LatencyResult:
    cfg = run.config

    async def measure(seconds: float, settle: float) -> LatencyResult:
        return await measure_e2e(
            design=design,
            api_url=api_url,
            mongo_uri=cfg.mongo_uri,
            kafka_bootstrap=cfg.kafka_bootstrap,
            inventory_database=inventory_db,
            smtp_dir=cfg.smtp_dir,
            rate=rate,
            duration=seconds,
            settle_timeout=settle,
        )

    # Warm-up (connections, lazy imports, first change-stream wake-ups): not measured.
    await measure(run.plan.e2e_warmup_seconds, 10.0)
    recorders = run.start_profile(f"e2e_{design}", run.plan.e2e_seconds)
    result = await measure(run.plan.e2e_seconds, run.plan.settle_seconds)
    await run.finish_profile(f"e2e_{design}", recorders)
    run.observe_memory()
    return result


# SecantusDB's Rust server, built by `cargo install secantus-mdb --root .stack/cargo` (optional).
RUST_MONGO: Final = REPO_ROOT / ".stack" / "cargo" / "bin" / "secantusd-rs"


class RustMongoStack(Stack):
    """The same stack with ``secantusd-rs`` in place of ``secantusd-py`` (same flags, except
    ``--enable-test-commands``, which the benchmark does not need and the Rust server lacks).

    Bench-only: a ``mongo_server`` field in ``StackConfig`` would be the clean way to offer it.
    """

    def _venv_bin(self, name: str) -> Path:
        if name == "secantusd-py":
            return RUST_MONGO
        return super()._venv_bin(name)


# -- main ---------------------------------------------------------------------------------------
async def run_all(run: Run, only: set[str] | None) -> None:
    cfg = run.config
    await ensure_topics(cfg.kafka_bootstrap)
    await wait_for_topics(cfg.kafka_bootstrap, list(ALL_TOPICS), 60)
    phases: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("order_api", lambda: phase_order_api(run)),
        ("relay", lambda: phase_relay(run)),
        ("consumers", lambda: phase_consumers(run)),
        ("e2e_ours", lambda: phase_e2e_ours(run)),
        ("e2e_article", lambda: phase_e2e_article(run)),
    ]
    for name, body in phases:
        if only and name not in only:
            continue
        await phase(run, name, body)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small backlog, short phases")
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "bench-results.json", help="results file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's data and logs")
    parser.add_argument("--only", action="append", help="run only this phase (repeatable)")
    parser.add_argument(
        "--mongo-server",
        choices=("python", "rust"),
        default="python",
        help="SecantusDB's Python server (the stack's) or its Rust server (.stack/cargo/bin)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy every Python process during the measured e2e phases; profiles go to DIR",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    run_id = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    config = StackConfig.for_tests(root)
    if args.mongo_server == "rust":
        if not RUST_MONGO.exists():
            sys.stderr.write(
                f"{RUST_MONGO} not found: cargo install secantus-mdb --root .stack/cargo\n"
            )
            return 2
        stack: Stack = RustMongoStack(replace(config, enable_test_commands=False))
    else:
        stack = Stack(config)
    run = Run(stack, plan, run_id)
    run.profile_dir = args.profile.resolve() if args.profile else None
    run.results.update(
        {
            "run_id": run_id,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mode": "quick" if args.quick else "full",
            "mongo_server": args.mongo_server,
            "plan": asdict(plan),
            "machine": report.machine_info(),
        }
    )
    started = time.monotonic()

    def _terminate(signum: int, _frame: object) -> None:
        # SIGTERM (e.g. from `timeout`) must still run the finally below: stop the stack.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"bench {run.results['mode']} run {run_id}: starting the stack in {root}", flush=True)
    # Settings classes of the in-process phases (consumers) read the infrastructure from here.
    os.environ.update(stack.config.service_env())
    try:
        stack.up(INFRA)
        asyncio.run(run_all(run, set(args.only) if args.only else None))
    finally:
        run.observe_memory()
        run.stop_all_own()
        stack.down(wipe=not args.keep)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    run.results["memory"] = run.memory.as_dict()
    run.results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    run.results["total_seconds"] = round(time.monotonic() - started, 1)
    print(report.finish(run.results, args.json))
    print(f"\nresults: {args.json} ({run.results['total_seconds']} s)")
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
