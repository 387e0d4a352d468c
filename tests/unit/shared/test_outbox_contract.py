"""The outbox contract has one owner: one TTL setting for both services, one set of names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.order.models import OutboxEvent
from services.order.settings import OrderSettings
from services.relay.settings import RelaySettings
from shared.outbox import (
    DEFAULT_PUBLISHED_TTL_SECONDS,
    OUTBOX_COLLECTION,
    PUBLISHED_TTL_ENV,
    OutboxField,
    outbox_indexes,
)


def test_both_services_read_the_one_ttl_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OrderSettings().outbox_published_ttl_seconds == DEFAULT_PUBLISHED_TTL_SECONDS
    assert RelaySettings().outbox_published_ttl_seconds == DEFAULT_PUBLISHED_TTL_SECONDS
    monkeypatch.setenv(PUBLISHED_TTL_ENV, "3600")
    assert OrderSettings().outbox_published_ttl_seconds == 3600
    assert RelaySettings().outbox_published_ttl_seconds == 3600


@pytest.mark.parametrize("retired", ["ORDER_OUTBOX_TTL_SECONDS", "RELAY_PUBLISHED_TTL_DAYS"])
def test_a_retired_ttl_variable_is_refused_naming_its_replacement(
    monkeypatch: pytest.MonkeyPatch, retired: str
) -> None:
    monkeypatch.setenv(retired, "30")
    for settings in (OrderSettings, RelaySettings):
        with pytest.raises(ValidationError, match=PUBLISHED_TTL_ENV):
            settings()


# Fields only the relay writes (its bookkeeping of attempts, leadership and Kafka positions).
_RELAY_BOOKKEEPING = (
    "ID",
    "TRANSIENT_ATTEMPTS",
    "RELAY_EPOCH",
    "KAFKA_TOPIC",
    "KAFKA_PARTITION",
    "KAFKA_OFFSET",
)


def test_the_order_apis_document_is_the_shared_contract() -> None:
    assert OutboxEvent.Settings.name == OUTBOX_COLLECTION
    # Beanie's own fields (id, revision_id) aside, every field is named by the contract.
    own = {
        name: f for name, f in OutboxEvent.model_fields.items() if name not in ("id", "revision_id")
    }
    aliases = {field.alias for field in own.values()}
    contract = {
        value
        for name, value in vars(OutboxField).items()
        if name.isupper() and name not in _RELAY_BOOKKEEPING
    }
    assert aliases == contract  # the relay's bookkeeping fields are the relay's alone


def test_the_ttl_index_uses_the_setting_in_seconds() -> None:
    ttl = [ix.document for ix in outbox_indexes(120) if "expireAfterSeconds" in ix.document]
    assert [ix["expireAfterSeconds"] for ix in ttl] == [120]
