"""Structured JSON-lines logging, so one event can be followed through all four services.

Pass correlation fields through ``extra``: ``log.info("published", extra={"event_id": ...})``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

# Fields we lift out of a record's ``extra`` into the JSON line.
_CONTEXT_FIELDS = (
    "event_id",
    "order_id",
    "aggregate_id",
    "topic",
    "partition",
    "offset",
    "group",
    "attempt",
    "delay",
    "count",
    "reason",
    "status",
    "duration_ms",
    "component",
)


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class RateLimitFilter(logging.Filter):
    """Let one record per message template through every ``interval`` seconds.

    aiokafka logs "Unable connect to node ..." about ten times a second per client while a
    broker is down; our own backoff loops already say "Kafka unreachable" once per state change,
    so the library's repeats add nothing but a log flood. Suppressed repeats are counted and the
    count is attached to the next record that passes.
    """

    def __init__(self, prefix: str, interval: float = 30.0) -> None:
        super().__init__()
        self._prefix = prefix
        self._interval = interval
        self._last: dict[tuple[str, int, str], float] = {}
        self._suppressed: dict[tuple[str, int, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefix):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.count = suppressed
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at ERROR/WARNING; our own backoff logs say it once.
    # A logger's filters do not apply to its children (aiokafka.conn, aiokafka.client ...), so
    # the limit sits on the handler.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    handler.addFilter(RateLimitFilter("aiokafka"))
