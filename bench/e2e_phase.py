"""End-to-end phases: each design at 50% of the API's measured maximum, then at a light 5/s.

At 50% of the API's maximum the whole pipeline shares one MongoDB server and two cores and may
saturate, so that run measures queueing; the light run measures what each design itself costs
(long enough for its p99 to rest on >= 200 samples in a full run). On the same pipeline, our
light load is measured ``plan.repeats`` times (its goal takes the median), the article's
``plan.article_repeats`` times, and the 50% load ``plan.e2e_loaded_repeats`` times per design
(``e2e_runs`` in the JSON); ``e2e`` holds the run of median p50 to the reservation, and the
report gives every percentile's spread and the article/ours ratios run by run (run i of one
design against run i of the other).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

from bench import cpu, order_api, pipelines, report, rest
from bench.e2e_latency import LatencyResult, OrderTimes, measure_e2e
from bench.pipelines import Pipeline
from bench.run import Run
from bench.stats import median_run

# E2E figures: steady load at this share of the measured maximum API rate.
LOAD_SHARE: Final = 0.5
LIGHT_RATE: Final = 5.0
WARMUP_SETTLE_SECONDS: Final = 10.0


async def measure(
    run: Run,
    pipeline: Pipeline,
    rate: float,
    seconds: float,
    settle: float,
    cancel_every: int = 0,
    times: OrderTimes | None = None,
    cpu_window: cpu.Window | None = None,
) -> LatencyResult:
    """One open-loop measurement of ``pipeline`` at ``rate`` orders/s for ``seconds``."""
    cfg = run.config
    return await measure_e2e(
        design=pipeline.design,
        api_url=pipeline.api_url,
        mongo_uri=cfg.mongo_uri,
        kafka_bootstrap=cfg.kafka_bootstrap,
        inventory_database=pipeline.inventory_database,
        smtp_dir=cfg.smtp_dir,
        rate=rate,
        duration=seconds,
        settle_timeout=settle,
        tokens=run.tokens,
        cancel_every=cancel_every,
        times=times,
        cpu_window=cpu_window,
        orders_database=pipeline.orders_database if pipeline.follows_verdicts else None,
    )


async def measure_with_cpu(
    run: Run,
    pipeline: Pipeline,
    rate: float,
    seconds: float,
    settle: float,
    cancel_every: int = 0,
) -> tuple[LatencyResult, dict[str, Any]]:
    """:func:`measure`, and the CPU every process of the run spent per completed order from
    the first send to the end of the settle wait (when the orders sent are all finished, or
    counted as incomplete)."""
    window = cpu.Window(run.process_pids)
    result = await measure(run, pipeline, rate, seconds, settle, cancel_every, cpu_window=window)
    return result, window.per_order(max(0, result.created - result.incomplete()))


async def warm_up(run: Run, pipeline: Pipeline) -> None:
    """Connections, lazy imports, first change-stream wake-ups: not measured."""
    await measure(run, pipeline, LIGHT_RATE, run.plan.e2e_warmup_seconds, WARMUP_SETTLE_SECONDS)


async def _e2e_rate(run: Run, api_url: str) -> float:
    """50% of the API's maximum (median of the wrk runs, else of the httpx runs); measured
    here with httpx when the order API phase gave no figure."""
    api_max = report.get(run.results, "summary", "api_orders_per_s", "median")
    if not isinstance(api_max, int | float) or api_max <= 0:
        seconds = min(run.plan.throughput_seconds, 5.0)
        fallback = await order_api.measure_api_httpx(api_url, seconds, run.tokens)
        api_max = fallback["orders_per_s"]
        run.results["api_max_fallback"] = {**fallback, "note": "httpx c=32 against the e2e API"}
    rate = round(float(api_max) * LOAD_SHARE, 1)
    run.results["e2e_rate"] = rate
    return rate


def _record(
    run: Run, key: str, result: LatencyResult | None, cpu_figure: dict[str, Any] | None = None
) -> None:
    """Add one run of ``key`` (None: it failed, recorded in ``failures``); ``e2e[key]``
    becomes the run of median p50 to the reservation."""
    runs: list[dict[str, Any] | None] = run.results.setdefault("e2e_runs", {}).setdefault(key, [])
    if result is None:
        runs.append(None)
    else:
        runs.append({**asdict(result), "cpu": cpu_figure} if cpu_figure else asdict(result))
    p50s = [((r or {}).get("reservation") or {}).get("p50_ms") for r in runs]
    shown = median_run(p50s)
    measured = [r for r in runs if r is not None]
    if measured:
        run.results.setdefault("e2e", {})[key] = runs[shown] if shown is not None else measured[-1]


async def wait_for_rest(run: Run, pipeline: Pipeline, window: str) -> None:
    """Before ``window``: until nothing of the windows before it is left in the pipeline
    (bench/rest.py); how long that took is kept in ``e2e_rest_waits``, a timeout in ``failures``
    too (the window is then measured anyway, on a pipeline not at rest)."""
    cfg = run.config
    look = rest.pipeline_look(
        cfg.mongo_uri, cfg.kafka_bootstrap, pipeline.outbox_databases, pipeline.groups
    )
    waited = await rest.wait_for_rest(look)
    run.results.setdefault("e2e_rest_waits", []).append(
        {
            "window": window,
            "seconds": round(waited.seconds, 1),
            "pending_events": waited.left.pending_events,
            "unread_records": waited.left.unread_records,
        }
    )
    if waited.timed_out:
        run.record_failure(
            TimeoutError(
                f"not at rest after {waited.seconds:.0f} s: {waited.left.pending_events} events"
                f" Pending, {waited.left.unread_records} records unread"
            ),
            step=f"rest before {window}",
        )


async def _both_loads(run: Run, pipeline: Pipeline, rate: float, key: str) -> None:
    await warm_up(run, pipeline)
    plan = run.plan
    loaded_runs, light_runs = plan.e2e_runs(key)
    for attempt in range(light_runs):
        result: LatencyResult | None = None
        if attempt < loaded_runs:
            label = f"e2e_{key}_{attempt}"
            await run.attempt(f"rest before {label}", attempt, wait_for_rest(run, pipeline, label))
            recorders = run.start_profile(label, plan.e2e_seconds)
            loaded = measure(run, pipeline, rate, plan.e2e_seconds, plan.settle_seconds)
            result = await run.attempt(f"{key} at {rate:g}/s", attempt, loaded)
            await run.finish_profile(label, recorders)
            _record(run, key, result)
        light_label = f"e2e_{key}_light_{attempt}"
        await run.attempt(
            f"rest before {light_label}", attempt, wait_for_rest(run, pipeline, light_label)
        )
        light_run = measure_with_cpu(
            run, pipeline, LIGHT_RATE, plan.light_seconds, plan.settle_seconds
        )
        light, light_cpu = await run.attempt(f"{key} light", attempt, light_run) or (None, None)
        _record(run, f"{key}_light", light, light_cpu)
        print(
            f"e2e {key} run {attempt + 1}/{light_runs}: p50 to reservation "
            f"{_p50(result)} ms at {result.achieved_rate if result else '-'}/s, {_p50(light)} ms "
            f"at {light.achieved_rate if light else '-'}/s",
            flush=True,
        )
        run.observe_memory()


def _p50(result: LatencyResult | None) -> float | None:
    return result.reservation.p50_ms if result and result.reservation else None


async def run_ours(run: Run) -> None:
    async with pipelines.ours(run, f"e2e_{run.run_id}") as pipeline:
        rate = await _e2e_rate(run, pipeline.api_url)
        await _both_loads(run, pipeline, rate, "ours")


async def run_article(run: Run) -> None:
    rate = run.results.get("e2e_rate")
    if not isinstance(rate, int | float):
        raise RuntimeError("no e2e rate: the API maximum was not measured")
    async with pipelines.article(run, f"art_{run.run_id}") as pipeline:
        await _both_loads(run, pipeline, rate, "article")
