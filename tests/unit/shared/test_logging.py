"""The JSON log lines and the aiokafka flood limit."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from decimal import Decimal

from shared.logging import JsonFormatter, RateLimitFilter


def _record(name: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), None)


def test_repeated_library_errors_pass_once_per_interval() -> None:
    limit = RateLimitFilter("aiokafka", interval=60.0)
    first = _record("aiokafka.conn", "Unable connect to node with id %s")
    assert limit.filter(first)
    repeats = [
        limit.filter(_record("aiokafka.conn", "Unable connect to node with id %s"))
        for _ in range(50)
    ]
    assert not any(repeats)


def test_records_of_other_loggers_are_never_limited() -> None:
    limit = RateLimitFilter("aiokafka", interval=60.0)
    assert all(limit.filter(_record("services.relay", "Kafka unreachable")) for _ in range(5))


def test_a_log_line_is_one_json_object_with_the_correlation_fields() -> None:
    record = _record("services.relay", "published")
    record.event_id = "e-1"
    record.partition = 3
    line = json.loads(JsonFormatter("relay").format(record))
    assert line["service"] == "relay"
    assert line["msg"] == "published"
    assert line["event_id"] == "e-1"
    assert line["partition"] == 3
    assert line["ts"].endswith("+00:00")


def _line(**extra: object) -> dict[str, object]:
    logger = logging.getLogger("services.test")
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "something happened", (), None, extra=extra
    )
    parsed: dict[str, object] = json.loads(JsonFormatter("relay").format(record))
    return parsed


def test_every_extra_field_reaches_the_line_under_its_own_name() -> None:
    # Fields no fixed list knows: a logger that drops them makes callers misuse known names.
    line = _line(database="orders", path="/tmp/stock.json", instance="relay-a", epoch=7)
    assert line["database"] == "orders"
    assert line["path"] == "/tmp/stock.json"
    assert line["instance"] == "relay-a"
    assert line["epoch"] == 7
    assert "component" not in line and "attempt" not in line


def test_structured_extra_values_stay_structured_and_others_become_text() -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

        __repr__ = __str__

    line = _line(
        offsets={"0": 5, "1": 9},
        ids=["a", "b"],
        ratio=0.5,
        lag=float("nan"),
        ok=True,
        when=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        amount=Decimal("12.50"),
        odd=Unprintable(),
    )
    assert line["offsets"] == {"0": 5, "1": 9}
    assert line["ids"] == ["a", "b"]
    assert line["ratio"] == 0.5 and line["ok"] is True
    assert line["lag"] == "nan"  # NaN has no JSON form; the line must stay parseable
    assert line["when"] == "2026-01-02T03:04:05+00:00"
    assert line["amount"] == "12.50"
    assert line["odd"] == "<unprintable Unprintable>"


def test_an_extra_field_never_replaces_a_field_of_the_line_itself() -> None:
    line = _line(service="impostor", level="DEBUG", ts="yesterday")
    assert line["service"] == "relay" and line["level"] == "INFO"
    assert line["extra_service"] == "impostor"
    assert line["extra_level"] == "DEBUG" and line["extra_ts"] == "yesterday"
