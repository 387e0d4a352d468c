"""How the DLQ CLI (and the console's replay form, which calls the same ``select``) reads a record
reference: ASCII digits only, one clear error for anything else, before Kafka is asked."""

from __future__ import annotations

import asyncio
import io

import pytest

from shared.dlq import StoredDlqRecord
from shared.dlq import __main__ as cli
from shared.dlq.__main__ import CliError, select

TOPIC = "order.created.dlq"
RECORDS = [
    StoredDlqRecord(TOPIC, 0, 5, b"k", b"v", []),
    StoredDlqRecord(TOPIC, 1, 5, b"k", b"v", []),
    StoredDlqRecord(TOPIC, 1, 7, b"k", b"v", []),
]

# Superscripts pass str.isdigit() and int() raises on them; other scripts' digits int() reads.
NOT_ASCII_DIGITS = ["\u00b2", "0:\u00b2", "\u00b9:5", "\u0663", "1:\uff17", "", ":", "1:", "-1"]


@pytest.mark.parametrize("ref", NOT_ASCII_DIGITS, ids=repr)
def test_a_reference_that_is_not_ascii_digits_is_a_clear_cli_error(ref: str) -> None:
    with pytest.raises(CliError, match="PARTITION:OFFSET"):
        select(RECORDS, ref=ref)


def test_a_reference_is_read_as_numbers_not_as_text() -> None:
    assert [r.ref for r in select(RECORDS, ref="1:07")] == ["1:7"]
    assert [r.ref for r in select(RECORDS, ref=" 7 ")] == ["1:7"]


def test_a_bare_offset_in_several_partitions_asks_for_the_partition() -> None:
    with pytest.raises(CliError, match="several partitions"):
        select(RECORDS, ref="5")


def test_the_cli_refuses_a_bad_reference_with_a_message_and_without_reading_kafka(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    read: list[str] = []

    async def fake_read_dlq(bootstrap_servers: str, dlq_topic: str) -> list[StoredDlqRecord]:
        read.append(dlq_topic)
        return RECORDS

    monkeypatch.setattr(cli, "read_dlq", fake_read_dlq)

    status = cli.main(["replay", "--offset", "\u00b2", "--dry-run"])

    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("dlq: ") and "PARTITION:OFFSET" in error and "'\u00b2'" in error
    assert read == []


def test_the_cli_still_shows_a_record_named_by_a_good_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake_read_dlq(bootstrap_servers: str, dlq_topic: str) -> list[StoredDlqRecord]:
        return RECORDS

    monkeypatch.setattr(cli, "read_dlq", fake_read_dlq)
    out = io.StringIO()

    status = asyncio.run(cli.main_async(["show", "1:7"], out=out))

    assert status == 0
    assert "record   order.created.dlq 1:7" in out.getvalue()
