"""Settings of the email consumer (``EMAIL_`` prefix, plus the shared infrastructure)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.consumer import ConsumerServiceSettings
from shared.contracts import EMAIL_GROUP, INVENTORY_REJECTED_TOPIC, INVENTORY_RESERVED_TOPIC


class EmailSettings(ConsumerServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAIL_", extra="ignore", frozen=True)

    port: int = Field(default=8003, ge=0, le=65535)
    group_id: str = Field(default=EMAIL_GROUP, min_length=1)
    # Inventory's verdicts: the confirmation and the rejection notice come from them (with
    # ``cancelled_topic``, the three topics email reads). The inherited ``topic``
    # (``order.created``) is not read: one mail per outcome, and the verdict follows the order
    # within milliseconds, so a "we received your order" note would only double every mail.
    reserved_topic: str = Field(default=INVENTORY_RESERVED_TOPIC, min_length=1)
    rejected_topic: str = Field(default=INVENTORY_REJECTED_TOPIC, min_length=1)
    sender: str = Field(default="Outbox Shop <orders@outbox.local>", min_length=3)
    # One SMTP conversation must end within this long; a sink that stops answering is a
    # transient fault (retried), not a hung consumer.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # One email in flight at a time: a crash between SMTP's 250 and the `done` marker can then
    # duplicate at most one email, the smallest window the claim/mark protocol allows. Sending
    # from several partitions at once would widen it to one email per partition in flight.
    max_concurrent_partitions: int = Field(default=1, ge=1, le=1_000)
