"""The slot function is CRC-32 (IEEE) of the UTF-8 bytes modulo the slot count: fixed vectors a
port to another language must reproduce, and the one RELAY_SLOTS setting both services read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.order.settings import OrderSettings
from services.relay.settings import RelaySettings
from shared.slots import DEFAULT_RELAY_SLOTS, SLOTS_ENV, slot_for

# (aggregate id, slots, slot). The CRC-32 check value of "123456789" is 0xCBF43926 in every
# implementation of the IEEE polynomial (zlib, java.util.zip.CRC32, Go's crc32.ChecksumIEEE);
# the definition below reproduces it, so these vectors pin slot_for to that function.
VECTORS = [
    ("123456789", 16, 0xCBF43926 % 16),
    ("123456789", 1000, 0xCBF43926 % 1000),
    ("", 16, 0),
    ("a", 16, 0xE8B7BE43 % 16),  # 3
    ("6b0960d3b796d04fa2fc54fc", 16, 14),  # CRC 0xD44D7B2E
    ("6b0960d3b796d04fa2fc54fc", 3, 2),
    ("6b0960d3b796d04fa2fc54fc", 1, 0),
    ("commande-été-注文", 16, 14),  # CRC 0xB506B3EE of the UTF-8 bytes
]


def _crc32_ieee(data: bytes) -> int:
    """CRC-32 from its definition (reflected polynomial 0xEDB88320, init and final XOR all
    ones), bit by bit: what a port to another language implements, independent of zlib."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


IDS = [
    "123456789",
    "6b0960d3b796d04fa2fc54fc",
    "order-\u00e9t\u00e9-\u6ce8\u6587-\U0001f600",  # UTF-8 bytes of 2, 3 and 4
    "a\ud800",  # a lone surrogate: still a slot (its UTF-8-style bytes), never an exception
    *(f"{i:024x}" for i in range(0, 2000, 7)),
]


@pytest.mark.parametrize("slots", [1, 3, 16, 1000, 1024])
def test_slot_for_is_the_crc32_ieee_of_the_utf8_bytes_modulo_the_count(slots: int) -> None:
    assert _crc32_ieee(b"123456789") == 0xCBF43926  # the reference is the IEEE CRC-32
    for aggregate_id in IDS:
        data = aggregate_id.encode("utf-8", "surrogatepass")
        assert slot_for(aggregate_id, slots) == _crc32_ieee(data) % slots, aggregate_id


@pytest.mark.parametrize(("aggregate_id", "slots", "slot"), VECTORS)
def test_slot_for_reproduces_the_fixed_vectors(aggregate_id: str, slots: int, slot: int) -> None:
    assert slot_for(aggregate_id, slots) == slot


def test_every_slot_is_within_the_count() -> None:
    ids = [f"{i:024x}" for i in range(2000)]
    slots = {slot_for(i, 16) for i in ids}
    assert slots == set(range(16))  # and the ids spread over all of them


def test_a_slot_count_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        slot_for("x", 0)


def test_both_services_read_the_one_relay_slots_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OrderSettings().relay_slots == RelaySettings().relay_slots == DEFAULT_RELAY_SLOTS == 16
    monkeypatch.setenv(SLOTS_ENV, "4")
    assert OrderSettings().relay_slots == RelaySettings().relay_slots == 4
    monkeypatch.setenv(SLOTS_ENV, "0")
    for settings in (OrderSettings, RelaySettings):
        with pytest.raises(ValidationError, match=SLOTS_ENV):
            settings()
