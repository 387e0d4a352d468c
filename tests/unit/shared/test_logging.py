"""The JSON log lines and the aiokafka flood limit."""

from __future__ import annotations

import json
import logging

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
