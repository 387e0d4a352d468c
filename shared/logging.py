"""Structured JSON-lines logging, so one event can be followed through every service.

Pass correlation fields through ``extra``, named for what they hold:
``log.info("published", extra={"event_id": ..., "order_id": ..., "topic": ..., "partition": ...,
"offset": ...})``. Every extra field reaches the line under its own name; the fields that
follow one event everywhere are ``event_id``, ``order_id``, ``topic``, ``partition`` and
``offset``. Every line goes through :func:`shared.redaction.redact`, so a connection URI in a
message, a field or a traceback never shows its password.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from shared.redaction import redact

# The attributes every LogRecord has (plus the two the formatting machinery adds): anything
# else on a record came from the caller's ``extra``.
_BLANK_RECORD = logging.LogRecord("", logging.INFO, "", 0, "", (), None)
_RECORD_ATTRIBUTES = frozenset(vars(_BLANK_RECORD)) | {"message", "asctime", "taskName"}
# The line's own fields; an extra field of the same name is written as ``extra_<name>``.
_LINE_FIELDS = frozenset({"ts", "level", "service", "logger", "msg", "exc"})


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: structures stay structures, anything else becomes text
    (never an exception: a log call must not fail because of what it logs)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # NaN and infinities have no JSON form (json.dumps would write bare NaN: invalid JSON).
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    try:
        return redact(str(value))
    except Exception:
        return f"<unprintable {type(value).__name__}>"


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
            "msg": redact(record.getMessage()),
        }
        for name, value in record.__dict__.items():
            if name in _RECORD_ATTRIBUTES or name.startswith("_") or value is None:
                continue
            line[f"extra_{name}" if name in _LINE_FIELDS else name] = _jsonable(value)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, default=_jsonable)


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
    # An exception nobody caught would otherwise be printed by Python as a plain traceback,
    # URIs and all; as a log record it is one JSON line, redacted like every other.
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("uncaught").critical(
        "uncaught exception, exiting", exc_info=(kind, error, traceback)
    )
