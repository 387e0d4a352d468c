"""One owner of the outbox contract: whichever service starts first, the outbox gets the same
indexes (the aggregate-version one unique), and an index that contradicts them stops start-up
loudly instead of being kept silently."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import pytest
from pymongo import ASCENDING, IndexModel

from services.order.app import create_app
from services.order.settings import OrderSettings
from shared.mongo import IndexConflict
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    INDEX_AGGREGATE_VERSION,
    ensure_outbox_indexes,
)
from tests.integration.relay.relay_world import RelayWorld, running_relay
from tests.integration.relay.test_relay_failures import REPO_ROOT
from tests.waiting import wait_until


async def indexes_of(world: RelayWorld) -> dict[str, dict[str, Any]]:
    return {ix["name"]: dict(ix) async for ix in await world.outbox.list_indexes()}


def order_settings(world: RelayWorld) -> OrderSettings:
    return OrderSettings(mongo_uri=world.stack.config.mongo_uri, database=world.database)


async def test_the_relay_starting_first_creates_the_unique_aggregate_version_index(
    world: RelayWorld,
) -> None:
    async with running_relay(world.settings()) as relay:
        await wait_until(lambda: relay.owned_slots(), timeout=15, message="leadership")
    relay_first = await indexes_of(world)
    assert relay_first[INDEX_AGGREGATE_VERSION].get("unique") is True
    # The order API starting second finds exactly the set it wants: no conflict, nothing added.
    app = create_app(order_settings(world))
    async with app.router.lifespan_context(app):
        pass
    assert await indexes_of(world) == relay_first


async def test_an_index_that_contradicts_the_contract_stops_both_services_loudly(
    world: RelayWorld,
) -> None:
    # What an older relay left behind: the same keys and name, without uniqueness.
    await world.outbox.create_indexes(
        [
            IndexModel(
                [("aggregateId", ASCENDING), ("aggregateVersion", ASCENDING)],
                name=INDEX_AGGREGATE_VERSION,
            )
        ]
    )
    env = {**os.environ, **world.stack.config.service_env(), **world.env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.relay",
        env={**env, "RELAY_PORT": "0"},
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert INDEX_AGGREGATE_VERSION in err.decode() and "unique" in err.decode()

    app = create_app(order_settings(world))
    with pytest.raises(IndexConflict, match=INDEX_AGGREGATE_VERSION):
        async with app.router.lifespan_context(app):
            pass


async def test_creating_the_indexes_again_or_over_an_equivalent_one_changes_nothing(
    world: RelayWorld,
) -> None:
    # An operator built the pending-scan index under another name: it is the same index.
    await world.outbox.create_index([("status", 1), ("createdAt", 1)], name="by_status_and_age")
    await ensure_outbox_indexes(world.outbox, DEFAULT_PUBLISHED_TTL_SECONDS)
    first = await indexes_of(world)
    await ensure_outbox_indexes(world.outbox, DEFAULT_PUBLISHED_TTL_SECONDS)
    assert await indexes_of(world) == first
    assert "status_1_createdAt_1" not in first and "by_status_and_age" in first
    # Another TTL is a real conflict: the setting would silently not take effect.
    with pytest.raises(IndexConflict, match="expireAfterSeconds"):
        await ensure_outbox_indexes(world.outbox, DEFAULT_PUBLISHED_TTL_SECONDS + 60)
