"""Settings of the inventory consumer (``INVENTORY_`` prefix, plus the shared infrastructure)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.consumer import ConsumerServiceSettings
from shared.contracts import INVENTORY_GROUP


class InventorySettings(ConsumerServiceSettings):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", frozen=True)

    port: int = Field(default=8002, ge=0, le=65535)
    group_id: str = Field(default=INVENTORY_GROUP, min_length=1)
    # The contract names the database `inventory`; tests point the service at their own.
    database: str = Field(default="inventory", min_length=1)
