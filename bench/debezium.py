"""Debezium phase: our relay and Debezium's MongoDB outbox connector, side by side, same run.

Both read the same outbox documents (bench/relay_drain.py's ``make_event``), on the same stack:

1. **drain**, ``plan.repeats`` times, ratios run by run: our relay drains a seeded backlog of
   ``plan.backlog`` events (as in the relay phase) while Debezium's connector is stopped (Kafka
   Connect's ``PUT /connectors/<name>/stop``: its task and change stream end, its resume token
   stays in the offsets file); then the same number of events is inserted into its outbox, the
   connector is resumed, and its drain is the time from the resume until all of them are on
   its topic (end offsets). Neither design runs while the other is measured.
2. **latency**: ``plan.latency_events`` events inserted 50 ms apart (the relay phase's rate),
   once with our relay running (``publishedAt - createdAt``: after the Kafka commit) and once
   with the connector running (the record's ``LogAppendTime - createdAt``: the moment Kafka had
   it, the earliest a publish can be called done). The method favours Debezium, never us.

Kafka Connect runs as its own JVM (``java -cp .stack/debezium/libs/* ConnectStandalone``) from
the jars ``make debezium-jars`` resolves (stack/debezium/pom.xml); its configuration is
bench/debezium_config.py. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bench import relay_drain
from bench.debezium_config import (
    CONNECT_MAIN_CLASS,
    CONNECTOR_NAME,
    DebeziumSetup,
    connector_properties,
    debezium_topic,
    render_properties,
    worker_properties,
)
from bench.run import Run
from bench.stats import Distribution, ratio_spread, spread
from services.relay.main import Relay
from shared.kafka import ensure_topics
from shared.mongo import MongoClient, make_mongo_client
from shared.outbox import OUTBOX_COLLECTION, OutboxField
from shared.settings import InfraSettings
from stack.config import REPO_ROOT, free_port
from stack.observe import wait_for_topics
from stack.supervisor import KAFKA_LOG4J_CONFIG

DEBEZIUM_LIBS: Final = REPO_ROOT / ".stack" / "debezium" / "libs"
PROCESS_NAME: Final = "debezium-connect"
TOPIC: Final = debezium_topic(relay_drain.BENCH_EVENT_TYPE)
# The relay phase's latency load: one event every 50 ms.
INSERT_INTERVAL_SECONDS: Final = 0.05
# A JVM start, plugin scan and connector start on two loaded cores.
START_TIMEOUT_SECONDS: Final = 180.0
STATE_TIMEOUT_SECONDS: Final = 60.0
POLL_SECONDS: Final = 0.1
# aiokafka's ConsumerRecord.timestamp_type for a broker-set (LogAppendTime) timestamp.
LOG_APPEND_TIME: Final = 1
# poll.interval.ms of the latency-tuned Debezium run (its default is 500).
TUNED_POLL: Final = 10


class ConnectWorker:
    """One Kafka Connect standalone worker running the outbox connector, driven by its REST API."""

    def __init__(self, run: Run, setup: DebeziumSetup) -> None:
        self.run = run
        self.setup = setup
        self.base_url = f"http://127.0.0.1:{setup.rest_port}"
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=10.0)

    def write_configs(self) -> tuple[Path, Path]:
        conf = self.setup.state_dir
        conf.mkdir(parents=True, exist_ok=True)
        worker = conf / "worker.properties"
        connector = conf / "connector.properties"
        worker.write_text(render_properties(worker_properties(self.setup)))
        connector.write_text(render_properties(connector_properties(self.setup)))
        return worker, connector

    async def start(self) -> None:
        if not any(DEBEZIUM_LIBS.glob("debezium-connector-mongodb-*.jar")):
            raise RuntimeError(f"no Debezium jars in {DEBEZIUM_LIBS}: run `make debezium-jars`")
        worker, connector = self.write_configs()
        argv = [
            "java", "-Xms256m", "-Xmx512m",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J_CONFIG}",
            "-cp", f"{DEBEZIUM_LIBS}/*",
            CONNECT_MAIN_CLASS, str(worker), str(connector),
        ]  # fmt: skip
        self.run.spawn(PROCESS_NAME, argv, {})
        await self.wait_for_state("RUNNING", START_TIMEOUT_SECONDS)

    async def state(self) -> tuple[str | None, list[str]]:
        """The connector's state and its tasks' (None while the REST API is not up)."""
        try:
            response = await self._http.get(f"/connectors/{CONNECTOR_NAME}/status")
        except httpx.TransportError:
            return None, []
        if response.status_code != 200:
            return None, []
        body = response.json()
        return body["connector"]["state"], [t["state"] for t in body.get("tasks", [])]

    async def wait_for_state(self, wanted: str, limit: float) -> None:
        """Wait until the connector and (unless stopped, which has none) its task are ``wanted``."""
        deadline = time.monotonic() + limit
        while True:
            connector, tasks = await self.state()
            # A stopped connector has no tasks; a running one is ready when all of them run.
            tasks_ready = wanted == "STOPPED" or (bool(tasks) and set(tasks) == {wanted})
            if connector == wanted and tasks_ready:
                return
            if "FAILED" in tasks or connector == "FAILED":
                raise RuntimeError(f"Debezium connector failed; see {self.log_path}")
            if PROCESS_NAME not in self.run.own_pids():
                raise RuntimeError(f"Kafka Connect exited; see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"connector {connector}/{tasks}, not {wanted}, after {limit:.0f} s"
                )
            await asyncio.sleep(POLL_SECONDS)  # poll interval, bounded by the deadline

    @property
    def log_path(self) -> Path:
        return self.run.config.log_path(PROCESS_NAME)

    async def stop_connector(self) -> None:
        """Stop the task (it ends its change stream; the offsets keep its resume token)."""
        (await self._http.put(f"/connectors/{CONNECTOR_NAME}/stop")).raise_for_status()
        await self.wait_for_state("STOPPED", STATE_TIMEOUT_SECONDS)

    async def reconfigure(self, properties: dict[str, str]) -> None:
        """Replace the connector's configuration (Connect restarts it from its offsets)."""
        response = await self._http.put(f"/connectors/{CONNECTOR_NAME}/config", json=properties)
        response.raise_for_status()
        await self.wait_for_state("RUNNING", STATE_TIMEOUT_SECONDS)

    async def resume_connector(self) -> None:
        (await self._http.put(f"/connectors/{CONNECTOR_NAME}/resume")).raise_for_status()

    async def close(self) -> None:
        await self._http.aclose()
        self.run.stop_own(PROCESS_NAME)


class TopicWatch:
    """End offsets and records of the connector's topic (created by Connect on first use)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self._partition_count = partitions
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        await self._consumer.start()

    @property
    def attached(self) -> bool:
        return bool(self._partitions)

    async def attach(self, limit: float) -> None:
        """Once the topic exists (within ``limit`` s, else nothing), read it from its start."""
        deadline = time.monotonic() + limit
        while TOPIC not in await self._consumer.topics():  # refreshes the metadata
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(POLL_SECONDS)  # poll interval, bounded by the deadline
        # Connect created it with topic.creation.default.partitions.
        self._partitions = [TopicPartition(TOPIC, p) for p in range(self._partition_count)]
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)

    async def skip_to_end(self) -> None:
        await self._consumer.seek_to_end(*self._partitions)

    async def total(self) -> int:
        ends = await self._consumer.end_offsets(self._partitions)
        return sum(ends.values())

    async def records(self, wanted: int, limit: float) -> list[ConsumerRecord[bytes, bytes]]:
        got: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + limit
        while len(got) < wanted and time.monotonic() < deadline:
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                got.extend(batch)
        return got

    async def stop(self) -> None:
        await self._consumer.stop()


async def warm_up(
    client: MongoClient, database: str, watch: TopicWatch, limit: float
) -> dict[str, Any]:
    """Events through the connector before anything is measured, one every 2 s until one is on
    the topic: the task reports RUNNING before its change stream is open, and without a
    snapshot an event written before that is never captured. Proves the path (topic, key =
    aggregateId, value = payload, headers)."""
    outbox = client[database][OUTBOX_COLLECTION]
    sent: dict[bytes, dict[str, Any]] = {}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        doc = relay_drain.make_event()
        await outbox.insert_one(doc)
        sent[doc[OutboxField.AGGREGATE_ID].encode()] = doc
        if not watch.attached:
            await watch.attach(2.0)
            if not watch.attached:
                continue
        for record in await watch.records(1, 2.0):
            doc = sent.get(record.key or b"", {})
            if doc:
                await watch.skip_to_end()
                return {
                    "topic": record.topic,
                    "key": (record.key or b"").decode(),
                    "value_is_payload": record.value == doc[OutboxField.PAYLOAD].encode(),
                    "headers": {k: v.decode(errors="replace") for k, v in record.headers},
                    "timestamp_type": (
                        "LogAppendTime" if record.timestamp_type == LOG_APPEND_TIME else "Create"
                    ),
                }
    raise TimeoutError(f"no event reached {TOPIC} within {limit:.0f} s; see the Connect log")


async def debezium_drain(
    worker: ConnectWorker,
    watch: TopicWatch,
    client: MongoClient,
    database: str,
    backlog: int,
    limit: float,
) -> dict[str, Any]:
    """With the connector stopped, insert ``backlog`` events, resume it, time until all are on
    Kafka (its end offsets)."""
    await asyncio.wait_for(relay_drain.seed(client, database, backlog), 300)
    before = await watch.total()
    started = time.perf_counter()
    first: float | None = None
    await worker.resume_connector()
    published = 0
    while time.perf_counter() - started < limit:
        await asyncio.sleep(POLL_SECONDS)  # poll interval of the end offsets, bounded by limit
        published = await watch.total() - before
        if published and first is None:
            first = time.perf_counter() - started
        if published >= backlog:
            break
    elapsed = time.perf_counter() - started
    await worker.wait_for_state("RUNNING", STATE_TIMEOUT_SECONDS)
    return {
        "events_per_s": round(min(published, backlog) / elapsed, 1),
        "drained": published,
        "backlog": backlog,
        "seconds": round(elapsed, 1),
        # From the resume to the first record: the task's start, not its throughput.
        "first_record_seconds": None if first is None else round(first, 2),
        "complete": published >= backlog,
    }


async def debezium_latency(
    client: MongoClient, database: str, watch: TopicWatch, count: int, within: float
) -> Distribution:
    """Commit-to-publish of ``count`` events inserted 50 ms apart with the connector running:
    the record's LogAppendTime minus the event's ``createdAt`` (both this host's clock)."""
    outbox = client[database][OUTBOX_COLLECTION]
    await watch.skip_to_end()
    created: dict[bytes, datetime] = {}
    latencies: list[float] = []

    async def collect() -> None:
        deadline = time.monotonic() + within
        while len(latencies) < count and time.monotonic() < deadline:
            for record in await watch.records(1, 0.2):
                if record.timestamp_type != LOG_APPEND_TIME:
                    raise RuntimeError(f"{TOPIC} lacks LogAppendTime: the figure would be wrong")
                at = created.pop(record.key or b"", None)
                if at is not None:
                    latencies.append(record.timestamp - at.timestamp() * 1000.0)

    collecting = asyncio.create_task(collect())
    for _ in range(count):
        doc = relay_drain.make_event()
        doc[OutboxField.CREATED_AT] = datetime.now(UTC)
        created[doc[OutboxField.AGGREGATE_ID].encode()] = doc[OutboxField.CREATED_AT]
        await outbox.insert_one(doc)
        await asyncio.sleep(INSERT_INTERVAL_SECONDS)  # the load's schedule, not a wait
    await collecting
    return Distribution.of(latencies, missing=count - len(latencies))


async def relay_drain_once(
    client: MongoClient, infra: InfraSettings, database: str, backlog: int, limit: float
) -> dict[str, Any]:
    """Our relay on a seeded backlog, exactly as the relay phase measures it."""
    await relay_drain.seed_backlog(client, database, backlog, "ours")
    relay = Relay(relay_drain.relay_settings(infra, database), client)

    async def published() -> int:
        return int(relay.metrics.registry.get_sample_value("relay_published_total") or 0)

    return await relay_drain.drain(client, database, backlog, limit, relay.run, published)


async def run_phase(run: Run) -> None:
    """Drain both designs ``plan.repeats`` times (ratios run by run), then the latency of both.
    A failed run costs its own figure (None at its index, recorded in ``failures``)."""
    cfg = run.config
    plan = run.plan
    infra = InfraSettings(mongo_uri=cfg.mongo_uri, kafka_bootstrap_servers=cfg.kafka_bootstrap)
    client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-debezium")
    await ensure_topics(
        cfg.kafka_bootstrap, [relay_drain.BENCH_TOPIC], replication=cfg.kafka_replication
    )
    await wait_for_topics(cfg.kafka_bootstrap, [relay_drain.BENCH_TOPIC], 60)
    database = f"bench_debezium_{run.run_id}"
    setup = DebeziumSetup(
        mongo_uri=cfg.mongo_uri,
        kafka_bootstrap=cfg.kafka_bootstrap,
        database=database,
        rest_port=free_port(),
        state_dir=cfg.root / "conf" / "debezium",
        replication=cfg.kafka_replication,
    )
    worker = ConnectWorker(run, setup)
    watch = TopicWatch(cfg.kafka_bootstrap, setup.partitions)
    runs: dict[str, list[dict[str, Any] | None]] = {"relay": [], "debezium": []}
    latency: dict[str, Any] = {}
    results: dict[str, Any] = {"runs": runs, "latency": latency, "topic": TOPIC}
    run.results["debezium"] = results
    within = plan.latency_events * INSERT_INTERVAL_SECONDS + 60
    # Our relay's databases are dropped after every window of the phase, not between them:
    # on the Python server a dropDatabase of 20,000 events outlasted 180 s here and stalled
    # the next seeding and drain.
    dropped_later: list[str] = []
    try:
        await watch.start()
        started = time.monotonic()
        await worker.start()
        results["start_seconds"] = round(time.monotonic() - started, 1)
        results["warm_up"] = await warm_up(client, database, watch, START_TIMEOUT_SECONDS)
        for attempt in range(plan.repeats):
            # Stopped while our relay runs: its change stream would cost the server a filter
            # pass over every write of our drain.
            await worker.stop_connector()
            relay_db = f"bench_debezium_relay_{run.run_id}_{attempt}"
            runs["relay"].append(
                await run.attempt(
                    "relay drain",
                    attempt,
                    relay_drain_once(
                        client, infra, relay_db, plan.backlog, plan.relay_timeout_seconds
                    ),
                )
            )
            dropped_later.append(relay_db)
            runs["debezium"].append(
                await run.attempt(
                    "debezium drain",
                    attempt,
                    debezium_drain(
                        worker, watch, client, database, plan.backlog, plan.relay_timeout_seconds
                    ),
                )
            )
            shown = {k: (v[-1] or {}).get("events_per_s") for k, v in runs.items()}
            print(f"debezium run {attempt + 1}/{plan.repeats}: {shown}", flush=True)
        await worker.stop_connector()
        relay_db = f"bench_debezium_relay_latency_{run.run_id}"
        relay_latency = await run.attempt(
            "relay latency",
            None,
            relay_drain.bench_latency(infra, client, plan.latency_events, within, relay_db),
        )
        dropped_later.append(relay_db)
        if relay_latency is not None:
            latency["relay"] = asdict(relay_latency)
        # It resumes from its last resume token, so nothing inserted from here on is missed.
        await worker.resume_connector()
        await worker.wait_for_state("RUNNING", STATE_TIMEOUT_SECONDS)
        # Then the same load with the task's batch wait cut from 500 ms to 10 ms: what a user
        # who tunes Debezium for latency gets, so the comparison is not won on a default.
        for key, poll_interval_ms in (("debezium", None), ("debezium_poll_10ms", TUNED_POLL)):
            if poll_interval_ms is not None:
                await worker.reconfigure(connector_properties(setup, poll_interval_ms))
            figure = await run.attempt(
                f"{key} latency",
                None,
                debezium_latency(client, database, watch, plan.latency_events, within),
            )
            if figure is not None:
                latency[key] = asdict(figure)
    finally:
        results["summary"] = summarize(results)
        await watch.stop()
        await worker.close()
        await client.close()
        for name in [*dropped_later, database]:
            await run.drop_database(name)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Both drains' spreads and the relay/Debezium ratio run by run; both latencies' p50/p99."""
    runs = results.get("runs", {})
    relay = [(r or {}).get("events_per_s") for r in runs.get("relay", [])]
    debezium = [(r or {}).get("events_per_s") for r in runs.get("debezium", [])]
    # Run i of each design sits at index i; a run cut short by an error has no partner yet.
    paired = min(len(relay), len(debezium))
    summary: dict[str, Any] = {
        "relay_events_per_s": spread(relay),
        "debezium_events_per_s": spread(debezium),
        "relay_over_debezium": ratio_spread(relay[:paired], debezium[:paired]),
    }
    latency = results.get("latency", {})
    for design in ("relay", "debezium", "debezium_poll_10ms"):
        if design in latency:
            summary[f"{design}_commit_to_publish_ms"] = {
                "p50": latency[design]["p50_ms"],
                "p99": latency[design]["p99_ms"],
                "missing": latency[design]["missing"],
            }
    return summary
