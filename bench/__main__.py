"""``python -m bench [capacity] [--quick]``: one benchmark run on one fresh embedded stack.

The one entry point of the benchmark; it orchestrates the phases, each implemented in its own
module (each bounded in count and time). A run, phase or clean-up that fails is recorded in
``failures`` (phase, run, step, error) and left out of the spreads, and the run goes on, so one
broken part never hides the others' figures; the report and the JSON are always written, and
the exit status is 1 only when a phase produced no figure at all (named on stderr):

1. ``order_api`` (bench/order_api.py): the API's transaction in raw PyMongo, and the API loaded
   by wrk and by httpx;
2. ``relay`` (bench/relay_drain.py): raw producer, raw MongoDB relay work, our relay's drain,
   the article's relay; commit-to-publish latency;
   ``debezium`` (bench/debezium.py): our relay and Debezium's MongoDB outbox connector side by
   side (backlog drain, commit-to-publish latency);
3. ``consumers`` (bench/consumers_drain.py): each consumer's drain and Redis cost per message;
4. ``e2e_ours``/``e2e_article`` (bench/e2e_phase.py): open-loop latency at 50% of the API's
   maximum and at 5/s, for both designs;
5. ``capacity`` (bench/capacity.py): the open-loop ramp of both designs and the MongoDB bound;
   ``tracing_off`` (bench/tracing_off.py): what the tracing hooks cost with no collector;
6. ``relays_scaling`` (bench/relays_scaling.py): one backlog drained by 1, 2 and 4 relay
   processes sharing the slots;
7. ``brokers`` (bench/brokers.py): our capacity ramp on a stack with 1 and with 3 Kafka brokers;
8. peak resident memory of every process (read before each stop and at the end).

A default run (``make bench``) is every phase but ``tracing_off``, ``breakdown``,
``relays_scaling`` and ``brokers`` (:data:`OPT_IN_PHASES`, run with ``--only``; ``make
bench-scaling`` runs the last two), sized to finish within 40 minutes; its first lines give the
estimate (bench/duration.py). ``python -m bench capacity`` runs only the ramp. Only 127.0.0.1
is ever contacted. The stack lives in a temporary directory and is wiped at the end
(``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Final

from bench import (
    breakdown,
    brokers,
    capacity,
    consumers_drain,
    debezium,
    duration,
    e2e_phase,
    order_api,
    relay_drain,
    relays_scaling,
    report,
    tracing_off,
)
from bench.run import RUST_MONGO, Plan, Run, RustMongoStack, phase
from shared.contracts import ALL_TOPICS
from shared.kafka import ensure_topics
from stack import INFRA, Stack, StackConfig
from stack.config import REPO_ROOT, kafka_brokers_argument
from stack.observe import wait_for_topics

PHASES: dict[str, Callable[[Run], Awaitable[None]]] = {
    "order_api": order_api.run_phase,
    "relay": relay_drain.run_phase,
    "debezium": debezium.run_phase,
    "consumers": consumers_drain.run_phase,
    "e2e_ours": e2e_phase.run_ours,
    "e2e_article": e2e_phase.run_article,
    "capacity": capacity.run_phase,
    "tracing_off": tracing_off.run_phase,
    "breakdown": breakdown.run_phase,
    "relays_scaling": relays_scaling.run_phase,
    "brokers": brokers.run_phase,
}


# Not in a default run (`make bench` is held under 40 minutes, issue 21): each answers one
# question on request and feeds no goal. `make bench-scaling` runs the issue-14 pair;
# `--only breakdown` and `--only tracing_off` the diagnostics.
OPT_IN_PHASES: Final = ("tracing_off", "breakdown", "relays_scaling", "brokers")
DEFAULT_PHASES: Final = tuple(name for name in PHASES if name not in OPT_IN_PHASES)


def chosen_phases(what: str, only: list[str] | None) -> list[str]:
    """The phases a run executes, in the bench's order: ``--only``'s, else the ramp alone for
    ``capacity``, else every phase of :data:`DEFAULT_PHASES`."""
    if only:
        return [name for name in PHASES if name in only]
    return ["capacity"] if what == "capacity" else list(DEFAULT_PHASES)


async def run_all(run: Run, only: list[str]) -> None:
    cfg = run.config
    await ensure_topics(cfg.kafka_bootstrap, replication=cfg.kafka_replication)
    await wait_for_topics(cfg.kafka_bootstrap, ALL_TOPICS, 60)
    for name, body in PHASES.items():
        if name in only:
            await phase(run, name, lambda body=body: body(run))  # type: ignore[misc]
            # Later phases read earlier figures (the e2e rate is 50% of the API's median); a
            # summary that cannot be computed yet is recomputed (and recorded) at the end.
            with contextlib.suppress(Exception):
                run.results["summary"] = report.summarize(run.results)


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--rates: numbers separated by commas, not {text!r}"
        ) from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rates: positive orders/s, not {text!r}")
    return rates


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "what", nargs="?", choices=("all", "capacity"), default="all",
        help="the default phases (`make bench`), or only the capacity ramp",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="small backlogs, short phases")
    parser.add_argument(
        "--kafka-brokers",
        type=kafka_brokers_argument,
        default=1,
        metavar="N",
        help="Kafka nodes of the bench's stack (default 1; 3: RF 3, min.insync.replicas 2)",
    )
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "bench-results.json", help="results file"
    )
    parser.add_argument("--keep", action="store_true", help="keep the stack's data and logs")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(PHASES),
        help="run only this phase (repeatable); the way to run "
        + ", ".join(OPT_IN_PHASES)
        + ", which a default run leaves out",
    )
    parser.add_argument("--repeats", type=int, help="runs per throughput figure (median)")
    parser.add_argument(
        "--backlog",
        type=int,
        help="outbox events per drain of the relay and debezium phases (full run: 10,000)",
    )
    parser.add_argument("--rates", type=_rates, help="capacity ramp: orders/s, e.g. 10,20,40")
    parser.add_argument("--step-seconds", type=float, help="capacity ramp: seconds per rate")
    parser.add_argument(
        "--cancel-every", type=int, help="capacity ramp: cancel every n-th order (0: none)"
    )
    parser.add_argument(
        "--capacity-repeats",
        type=int,
        help="capacity ramp: ramps of our design (median; the article's: one)",
    )
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
        help="py-spy every Python process during the measured phases; profiles go to DIR",
    )
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick() if args.quick else Plan.full()
    if args.repeats is not None:
        plan = replace(plan, repeats=max(1, args.repeats))
    if args.backlog is not None:
        plan = replace(plan, backlog=max(1, args.backlog))
    if args.rates is not None:
        plan = replace(plan, capacity_rates=args.rates)
    if args.cancel_every is not None:
        plan = replace(plan, capacity_cancel_every=max(0, args.cancel_every))
    if args.capacity_repeats is not None:
        plan = replace(plan, capacity_repeats=max(1, args.capacity_repeats))
    if args.step_seconds is not None:
        plan = replace(plan, capacity_step_seconds=max(1.0, args.step_seconds))
    return plan


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    plan = _plan(args)
    only = chosen_phases(args.what, args.only)
    run_id = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    config = StackConfig.for_tests(root, kafka_brokers=args.kafka_brokers)
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
            "phases": only,
            "mongo_server": args.mongo_server,
            "kafka_brokers": config.kafka_brokers,
            "plan": asdict(plan),
            "machine": report.machine_info(),
            "versions": report.versions(args.mongo_server),
        }
    )
    started = time.monotonic()

    def _terminate(signum: int, _frame: object) -> None:
        # SIGTERM (e.g. from `timeout`) must still run the finally below: stop the stack.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"bench {run.results['mode']} run {run_id}: {', '.join(only)}", flush=True)
    print(duration.describe(plan, only), flush=True)
    print(f"starting the stack in {root}", flush=True)
    # Settings classes of the in-process phases (consumers) read the infrastructure from here.
    os.environ.update(stack.config.service_env())
    try:
        run.phase_name = "stack"
        stack.up(INFRA)
        asyncio.run(run_all(run, only))
    except Exception as exc:
        # The stack did not come up, or the topics were not created: every phase is without
        # figures, which the exit status says; the report is still written.
        traceback.print_exc()
        run.record_failure(exc)
    finally:
        # Whatever happened (SIGTERM included), stop what was started and write the report.
        _shut_down(run, stack, root, keep=args.keep)
        run.results["memory"] = run.memory.as_dict()
        run.results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        run.results["total_seconds"] = round(time.monotonic() - started, 1)
        print(report.finish(run.results, args.json))
        print(f"\nresults: {args.json} ({run.results['total_seconds']} s)")
    without = report.phases_without_figure(run.results)
    if without:
        sys.stderr.write(f"bench: no figure from phase(s) {', '.join(without)}\n")
        return 1
    return 0


def _shut_down(run: Run, stack: Stack, root: Path, *, keep: bool) -> None:
    """Each step of the shutdown on its own: one that fails is recorded, the others run."""
    run.phase_name = "shutdown"
    for step, action in (
        ("memory", run.observe_memory),
        ("bench processes", run.stop_all_own),
        ("stack down", lambda: stack.down(wipe=not keep)),
    ):
        try:
            action()
        except Exception as exc:
            run.record_failure(exc, step=step)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
