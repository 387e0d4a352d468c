"""Settings of the order service's verdict consumer (``ORDER_VERDICTS_`` prefix, plus the shared
infrastructure)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.consumer import ConsumerServiceSettings
from shared.contracts import (
    INVENTORY_REJECTED_TOPIC,
    INVENTORY_RELEASED_TOPIC,
    INVENTORY_RESERVED_TOPIC,
    ORDER_GROUP,
)


class VerdictSettings(ConsumerServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDER_VERDICTS_", extra="ignore", frozen=True)

    # Health and metrics (/healthz, /readyz, /metrics); the consumer serves nothing else.
    port: int = Field(default=8006, ge=0, le=65535)
    group_id: str = Field(default=ORDER_GROUP, min_length=1)
    # The order API's database (the contract names it `orders`): the orders this consumer moves.
    database: str = Field(default="orders", min_length=1)
    # StockReserved: placed -> confirmed. Tests point the three topics at private ones.
    topic: str = Field(default=INVENTORY_RESERVED_TOPIC, min_length=1)
    # StockRejected: placed -> rejected.
    rejected_topic: str = Field(default=INVENTORY_REJECTED_TOPIC, min_length=1)
    # StockReleased: recorded in the order's history, the status unchanged.
    released_topic: str = Field(default=INVENTORY_RELEASED_TOPIC, min_length=1)
