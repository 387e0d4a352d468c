"""Settings of the email consumer (``EMAIL_`` prefix, plus the shared infrastructure)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.consumer import ConsumerServiceSettings
from shared.contracts import EMAIL_GROUP


class EmailSettings(ConsumerServiceSettings):
    model_config = SettingsConfigDict(env_prefix="EMAIL_", extra="ignore", frozen=True)

    port: int = Field(default=8003, ge=0, le=65535)
    group_id: str = Field(default=EMAIL_GROUP, min_length=1)
    sender: str = Field(default="Outbox Shop <orders@outbox.local>", min_length=3)
    # One SMTP conversation must end within this long; a sink that stops answering is a
    # transient fault (retried), not a hung consumer.
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
