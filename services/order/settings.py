"""Settings of the order API (``ORDER_`` prefix on top of the shared infrastructure variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.outbox import OutboxTtlSetting
from shared.settings import RelaySlotsSetting, ServiceSettings

# 64 KiB: a hundred order lines with long SKUs fit several times over; anything bigger is not an
# order, and refusing it early keeps one client from making the API buffer megabytes.
DEFAULT_MAX_BODY_BYTES = 64 * 1024


class OrderSettings(ServiceSettings, OutboxTtlSetting, RelaySlotsSetting):
    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", frozen=True)

    port: int = Field(default=8000, ge=0, le=65535)
    # The contract names the database `orders`; tests point the API at their own database.
    database: str = Field(default="orders", min_length=1)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    # Deadline of the database work of one request. Below the 5 s the contract promises for a
    # 503 so that routing, validation and the response itself fit inside the promise too.
    request_timeout_seconds: float = Field(default=4.0, gt=0, le=60)

    @property
    def request_deadline_seconds(self) -> float:
        """The database budget of one request: never longer than the client's own timeout."""
        return min(self.request_timeout_seconds, self.mongo_timeout_seconds)
