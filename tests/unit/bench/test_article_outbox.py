"""The article's design is measured with the indexes its own queries need, not ours."""

from __future__ import annotations

from bench.article_relay import indexes_the_article_does_not_use
from shared.outbox import (
    INDEX_AGGREGATE_VERSION,
    INDEX_PENDING,
    INDEX_PUBLISHED_TTL,
    INDEX_SLOT_PENDING,
)


def test_only_the_article_status_index_and_the_id_index_are_kept_of_what_our_api_creates() -> None:
    # What index_information() answers for an outbox our order API created at start-up.
    ours = {
        "_id_": {"key": [("_id", 1)]},
        INDEX_PENDING: {"key": [("status", 1), ("createdAt", 1)]},
        INDEX_AGGREGATE_VERSION: {
            "key": [("aggregateId", 1), ("aggregateVersion", 1)],
            "unique": True,
        },
        INDEX_PUBLISHED_TTL: {"key": [("publishedAt", 1)], "expireAfterSeconds": 604800},
        INDEX_SLOT_PENDING: {"key": [("slot", 1), ("status", 1), ("createdAt", 1)]},
    }
    assert indexes_the_article_does_not_use(ours) == sorted(
        [INDEX_AGGREGATE_VERSION, INDEX_PUBLISHED_TTL, INDEX_SLOT_PENDING]
    )


def test_an_index_on_the_same_fields_in_another_order_is_not_the_articles() -> None:
    info = {
        "_id_": {"key": [("_id", 1)]},
        "article_status_createdAt": {"key": [("status", 1), ("createdAt", 1)]},
        "createdAt_status": {"key": [("createdAt", 1), ("status", 1)]},
        "status_desc": {"key": [("status", 1), ("createdAt", -1.0)]},
    }
    assert indexes_the_article_does_not_use(info) == ["createdAt_status", "status_desc"]
