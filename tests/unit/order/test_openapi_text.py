"""The OpenAPI document states the limits this deployment's settings set, not copies of defaults."""

from __future__ import annotations

import json
import re

from services.order.app import create_app
from services.order.settings import OrderSettings


def test_openapi_limits_come_from_the_settings() -> None:
    settings = OrderSettings(max_body_bytes=2048, request_timeout_seconds=2.5)

    document = json.dumps(create_app(settings).openapi())

    assert "2 KiB" in document
    assert "2.5 s" in document
    assert "64 KiB" not in document
    assert not re.search(r"(?<![0-9.])5 s\b", document), "the default deadline leaked in"


def test_openapi_body_limit_in_bytes_when_not_whole_kibibytes() -> None:
    document = json.dumps(create_app(OrderSettings(max_body_bytes=1500)).openapi())
    assert "1500 bytes" in document
