"""State of one benchmark run, shared by the phases: the plan, the stack, the results and the
processes the bench spawned; ``phase`` runs one phase so that its failure never hides the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from pymongo.errors import PyMongoError

from bench import cpu, profiling
from bench.memory import PeakMemory
from shared.mongo import make_mongo_client
from shared.slots import DEFAULT_RELAY_SLOTS
from stack import Stack, StackConfig
from stack.config import REPO_ROOT
from stack.issuer import UserTokens

SUBPROCESS_READY_TIMEOUT: Final = 60.0
SUBPROCESS_STOP_TIMEOUT: Final = 20.0
# A clean-up's deadline: dropping a large database on the Python server under load took over
# the clients' 30 s (issue 21), and a drop is never worth a figure.
CLEANUP_TIMEOUT: Final = 180.0
# The load generators' bearer tokens outlive the longest run (a full bench takes hours), so
# none is minted again inside a measured window.
TOKEN_TTL_SECONDS: Final = 24 * 3600

T = TypeVar("T")


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
    # Each throughput figure, and our light-load run, is the median of this many runs (with
    # min and max).
    repeats: int
    # The light-load run lasts long enough for its p99 to rest on >= 200 samples at 5/s.
    light_seconds: float
    # The capacity ramp: offered orders/s, and how long each is offered.
    capacity_rates: tuple[float, ...]
    capacity_step_seconds: float
    # Every n-th order of the ramp is cancelled right after its 201 (10: a tenth); 0: none.
    capacity_cancel_every: int
    # Ramps of our design (the capacity's median, min and max); minutes per ramp.
    capacity_repeats: int
    # Ramps of the article's design: one is enough to place it (it sustains no rate within the
    # p99 limit, its 500 ms poll alone breaks it), and each costs minutes of a 40-minute run.
    article_capacity_repeats: int = 1
    # End-to-end runs at 50% of the API's maximum, per design: a figure of queueing (the
    # pipeline falls behind and each run waits out its settle window), no goal rests on it.
    e2e_loaded_repeats: int = 1
    # The article's light-load runs: its p50 is ten times ours, no noise hides that.
    article_repeats: int = 1
    # Issue 14: the backlog N relay processes drain together, the process counts, RELAY_SLOTS,
    # and the bound on one drain; the Kafka broker counts the capacity ramp is run with.
    scaling_backlog: int = 20_000
    relay_counts: tuple[int, ...] = (1, 2, 4)
    relay_slots: int = DEFAULT_RELAY_SLOTS
    scaling_timeout_seconds: float = 240.0
    broker_counts: tuple[int, ...] = (1, 3)

    def e2e_runs(self, design: str) -> tuple[int, int]:
        """Runs of ``design`` at 50% load and at light load: our light load (a goal)
        ``repeats`` times, the article's ``article_repeats``; the 50% load
        ``e2e_loaded_repeats`` times, never more often than the light one."""
        light = self.repeats if design == "ours" else self.article_repeats
        return min(light, self.e2e_loaded_repeats), light

    @classmethod
    def full(cls) -> Plan:
        """`make bench`: every goal's figure, sized to finish within 40 minutes on two cores
        (bench/duration.py estimates it at the start of every run; a unit test holds it)."""
        return cls(
            # 10,000 events: about 23 s of our relay's drain at 440 events/s, at half the
            # seeding, draining and dropping of 20,000 (whose dropDatabase outlasted 180 s on
            # a loaded machine). Start-ups weigh more in a shorter drain: Debezium's task takes
            # about 3.5 s to its first record (``first_record_seconds``). `--backlog 20000`
            # measures at the earlier size.
            backlog=10_000,
            # The article's relay moves at most 100 events/s by design: 2,000 give its rate in
            # ~20 s; a larger backlog would take minutes to say the same thing.
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
            repeats=3,
            light_seconds=40.0,
            # The goal: steps no coarser than 10/s between 10 and 80; 20 s a step is
            # 200 orders at 10/s, enough for a p99. Our ramp stops at its first failing step.
            capacity_rates=(10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0),
            capacity_step_seconds=20.0,
            capacity_cancel_every=10,
            capacity_repeats=3,
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
            repeats=1,
            light_seconds=6.0,
            capacity_rates=(5.0, 10.0),
            capacity_step_seconds=5.0,
            capacity_cancel_every=10,
            capacity_repeats=1,
            scaling_backlog=2_000,
            relay_counts=(1, 2),
            scaling_timeout_seconds=60.0,
        )


class Run:
    """State of one benchmark run: the stack, the results, the processes we spawned."""

    def __init__(self, stack: Stack, plan: Plan, run_id: str) -> None:
        self.stack = stack
        self.plan = plan
        self.run_id = run_id
        self.memory = PeakMemory()
        # Every run, phase or clean-up that failed: {"phase", "run", "step", "error"}.
        self.results: dict[str, Any] = {"failures": [], "phase_seconds": {}}
        # The phase running now (set by ``phase``): where a failure is recorded.
        self.phase_name: str | None = None
        self._own: dict[str, subprocess.Popen[bytes]] = {}
        self.profile_dir: Path | None = None
        self._profiling: dict[str, list[profiling.Recorder]] = {}

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    @functools.cached_property
    def tokens(self) -> UserTokens:
        """The order API's callers' tokens, from this stack's development issuer: each load
        mints its users' before its first measured window."""
        return UserTokens.for_stack(self.config, ttl_seconds=TOKEN_TTL_SECONDS)

    # -- failures: recorded, never hiding the other figures -------------------------------------
    def record_failure(
        self, error: BaseException, *, run: int | None = None, step: str | None = None
    ) -> None:
        """Record that ``step`` of run ``run`` (None: the whole phase) of the current phase
        failed; its figure is then missing from every spread and ratio, not guessed."""
        text = f"{type(error).__name__}: {error}"
        self.results["failures"].append(
            {"phase": self.phase_name, "run": run, "step": step, "error": text}
        )
        where = " ".join(w for w in (step, f"run {run + 1}" if run is not None else None) if w)
        print(f"--- {self.phase_name}: {where or 'phase'} failed: {text}", flush=True)

    async def attempt(self, step: str, run: int | None, work: Awaitable[T]) -> T | None:
        """``work``'s result, or None (the failure recorded) when it raised: one failed run
        costs its own figure only, and the list it goes into keeps its run index."""
        try:
            return await work
        except Exception as exc:
            self.record_failure(exc, run=run, step=step)
            return None

    async def drop_database(
        self, database: str, *, uri: str | None = None, within: float = CLEANUP_TIMEOUT
    ) -> None:
        """Drop a database a measurement used, after its window: clean-up only, so it never
        decides a run. A drop that fails or outlasts ``within`` seconds is recorded (what is
        left goes with the stack's data at the end of the run)."""
        client = make_mongo_client(uri or self.config.mongo_uri, within, "bench-cleanup")
        try:
            await asyncio.wait_for(client.drop_database(database), within + 5)
        except (TimeoutError, PyMongoError) as exc:
            self.record_failure(exc, step=f"clean-up: drop {database}")
        finally:
            await client.close()

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

    def process_pids(self) -> dict[str, int]:
        """Every process of the run: the stack's instances, the bench's own and this one (the
        load generator and its observers run in it)."""
        return {**self.stack.pids(), **self.own_pids(), cpu.BENCH_PROCESS: os.getpid()}

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
        pids = self.process_pids()
        # Not the JVMs (every Kafka node: kafka, kafka-2 ...) nor redis-server.
        targets = {n: p for n, p in pids.items() if n.split("-")[0] not in ("kafka", "redis")}
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


async def wait_for_file(path: Path, proc: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while not os.path.exists(path):  # noqa: ASYNC240 - one stat per 100 ms, not worth a thread
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} not written within {limit:.0f} s")
        await asyncio.sleep(0.1)  # poll interval, bounded by the deadline


async def phase(run: Run, name: str, body: Callable[[], Awaitable[None]]) -> None:
    """Run one phase; record its duration, and its error instead of aborting the whole run."""
    started = time.monotonic()
    run.phase_name = name
    print(f"--- {name} ...", flush=True)
    try:
        await body()
    except Exception as exc:
        traceback.print_exc()
        run.record_failure(exc)
    except BaseException as exc:
        # SIGTERM (SystemExit) or Ctrl-C: the phase is recorded as cut short, and the run stops
        # (the orchestrator still stops the stack and writes the report).
        run.record_failure(exc)
        raise
    finally:
        await run.finish_all_profiles()
        elapsed = round(time.monotonic() - started, 1)
        run.results["phase_seconds"][name] = elapsed
        print(f"--- {name} done in {elapsed} s", flush=True)


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
