"""Structured JSON-lines logging, so one event can be followed through all four services.

Pass correlation fields through ``extra``: ``log.info("published", extra={"event_id": ...})``.
"""

from __future__ import annotations

import json
import logging
import sys
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


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at ERROR/WARNING; our own backoff logs say it once.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
