"""Settings of the inventory consumer (``INVENTORY_`` prefix, plus the shared infrastructure)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.consumer import ConsumerServiceSettings
from shared.contracts import INVENTORY_GROUP
from shared.outbox import OutboxTtlSetting
from shared.settings import RelaySlotsSetting


# The outbox's TTL and RELAY_SLOTS: inventory writes its verdicts into its own outbox, which
# the relays of the inventory database publish (both must agree on the slot count).
class InventorySettings(ConsumerServiceSettings, OutboxTtlSetting, RelaySlotsSetting):
    model_config = SettingsConfigDict(env_prefix="INVENTORY_", extra="ignore", frozen=True)

    port: int = Field(default=8002, ge=0, le=65535)
    group_id: str = Field(default=INVENTORY_GROUP, min_length=1)
    # The contract names the database `inventory`; tests point the service at their own.
    database: str = Field(default="inventory", min_length=1)
