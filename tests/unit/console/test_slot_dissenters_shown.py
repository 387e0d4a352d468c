"""The overview's slot owners name a relay that refuses to act because its RELAY_SLOTS is not
the running relays' one, with its value, in red (``views.slot_count_dissenters`` reads them)."""

from __future__ import annotations

from typing import Any

from services.console.app import _environment


def _overview(dissenters: dict[str, int]) -> str:
    data: dict[str, Any] = {
        "outbox": {"pending": 0, "oldest_pending_age_seconds": 0.0, "failed": 0},
        "slotsError": None,
        "slotOwners": {"relay-a": 16},
        "slotDissenters": dissenters,
        "slots": [],
        "readiness": [],
        "lag": [],
        "dlq": {},
    }
    template = _environment().get_template("overview.html")
    return template.render(data=data, chart={}, sample_seconds=5, title="Overview")


def test_a_relay_with_another_slot_count_is_shown_in_red_with_its_value() -> None:
    page = _overview({"relay-x": 32})
    assert (
        '<span class="bad" data-dissenter="relay-x">relay-x RELAY_SLOTS=32: refuses to act</span>'
        in page
    )


def test_relays_that_agree_show_no_dissenter() -> None:
    assert "data-dissenter" not in _overview({})
