"""Which slot an outbox document without one receives (services/relay/backfill.py)."""

from __future__ import annotations

from typing import Any

from services.relay.backfill import MALFORMED_SLOT, slot_of_document, unslotted_query
from shared.slots import slot_for


def test_a_document_gets_the_slot_of_its_aggregate_id() -> None:
    doc: dict[str, Any] = {"aggregateId": "65f0c0ffee0000000000beef"}
    assert slot_of_document(doc, 16) == slot_for("65f0c0ffee0000000000beef", 16)


def test_a_document_whose_aggregate_id_cannot_be_hashed_goes_where_it_is_marked_failed() -> None:
    for doc in ({}, {"aggregateId": None}, {"aggregateId": 42}, {"aggregateId": ""}):
        assert slot_of_document(doc, 16) == MALFORMED_SLOT


def test_the_search_covers_missing_slots_and_slots_beyond_the_count_only() -> None:
    query = unslotted_query(8)
    clauses = query["$or"]
    assert {k: v for k, v in clauses[0].items() if k == "slot"} == {"slot": None}
    assert clauses[1]["slot"] == {"$gte": 8}
    # Published events never need a slot: only Pending and Failed ones are looked at.
    for clause in clauses:
        assert clause["status"] == {"$in": ["Pending", "Failed"]}
