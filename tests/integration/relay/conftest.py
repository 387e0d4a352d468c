"""Fixtures for the relay's integration tests: a private database and Kafka transactional id
per test (see relay_world.py), with every relay process the test started stopped at the end."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest

from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack import Stack
from tests.integration.relay.relay_world import RelayWorld, end_offsets


@pytest.fixture
async def world(stack: Stack) -> AsyncIterator[RelayWorld]:
    tag = uuid.uuid4().hex[:8]
    client = make_mongo_client(stack.config.mongo_uri, 10.0, "relay-tests")
    world = RelayWorld(
        stack=stack,
        mongo=client,
        database=f"relay_it_{tag}",
        transactional_id=f"relay-it-{tag}",
        start_offsets=await end_offsets(stack.config.kafka_bootstrap),
    )
    # The collection exists before any relay starts, as in production (the order API creates it).
    # Creating it implicitly from two connections at once (the relay's createIndexes and the
    # test's first insert) has hung the embedded server's storage layer.
    await client[world.database].create_collection(OUTBOX_COLLECTION)
    try:
        yield world
    finally:
        for instance in world.instances:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(stack.stop, instance)
        with contextlib.suppress(Exception):
            await client.drop_database(world.database)
        await client.close()
