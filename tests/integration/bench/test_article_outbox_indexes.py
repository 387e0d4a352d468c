"""The article's design is measured on an outbox with its own index only, even behind our API."""

from __future__ import annotations

import uuid

from bench.article_relay import keep_only_article_indexes
from shared.mongo import make_mongo_client
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    INDEX_PENDING,
    OUTBOX_COLLECTION,
    ensure_outbox_indexes,
)
from stack import Stack


async def test_an_outbox_our_api_indexed_keeps_only_the_index_the_article_queries_use(
    stack: Stack,
) -> None:
    client = make_mongo_client(stack.config.mongo_uri, 30.0, "test-article-indexes")
    database = f"test_article_idx_{uuid.uuid4().hex[:8]}"
    outbox = client[database][OUTBOX_COLLECTION]
    try:
        # What our order API creates at start-up.
        await ensure_outbox_indexes(outbox, DEFAULT_PUBLISHED_TTL_SECONDS)
        assert len(await outbox.index_information()) > 2
        left = await keep_only_article_indexes(outbox)
        assert left == sorted(["_id_", INDEX_PENDING])
        assert sorted(await outbox.index_information()) == left
        # Idempotent: a second pass changes nothing.
        assert await keep_only_article_indexes(outbox) == left
    finally:
        await client.drop_database(database)
        await client.close()
