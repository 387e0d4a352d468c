"""One relay design, configured per outbox: ``RELAY_DATABASE`` picks the outbox, and relays of
two outboxes never share a Kafka transactional id unless told to."""

from __future__ import annotations

import pytest

from services.relay.settings import RelaySettings


def test_the_order_outbox_keeps_its_transactional_id() -> None:
    settings = RelaySettings()
    assert (settings.database, settings.transactional_id) == ("orders", "outbox-relay")


def test_another_outbox_gets_a_transactional_id_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Slot n of both outboxes' relays would otherwise use one id and fence each other's
    # producer at every turn.
    monkeypatch.setenv("RELAY_DATABASE", "inventory")
    settings = RelaySettings()
    assert (settings.database, settings.transactional_id) == ("inventory", "inventory-relay")
    assert settings.transactional


def test_a_transactional_id_that_is_set_wins_even_when_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_DATABASE", "inventory")
    monkeypatch.setenv("RELAY_TRANSACTIONAL_ID", "stock-relay")
    assert RelaySettings().transactional_id == "stock-relay"
    assert RelaySettings(transactional_id="").transactional is False
