"""Settings of the operator console (``CONSOLE_`` prefix, plus the shared infrastructure)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from shared.contracts import (
    CONSUMER_GROUP_TOPICS,
    EMAIL_GROUP,
    EVENT_TOPICS,
    INVENTORY_GROUP,
    ORDER_GROUP,
    dlq_topic_for,
)
from shared.settings import RelaySlotsSetting, ServiceSettings

# 32 characters: what `secrets.token_urlsafe(24)` gives; anything shorter is guessable enough
# that a console able to replay dead letters should not start with it.
MIN_TOKEN_CHARS = 32


class ConsoleSettings(ServiceSettings, RelaySlotsSetting):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore", frozen=True)

    # 127.0.0.1: the console acts on the outbox and the DLQ; it is not for the network at large.
    host: str = "127.0.0.1"
    port: int = Field(default=8004, ge=0, le=65535)
    # Required, no default: every page and API call needs it (Bearer or the sign-in form).
    token: SecretStr
    # Where the services answer /readyz and /metrics (the embedded stack's default ports).
    order_url: str = "http://127.0.0.1:8000"
    relay_urls: tuple[str, ...] = ("http://127.0.0.1:8001",)
    inventory_url: str = "http://127.0.0.1:8002"
    email_url: str = "http://127.0.0.1:8003"
    # Where the relays of inventory's outbox (each outbox has relays of its own) and the order
    # service's consumer of inventory's verdicts answer /readyz and /metrics.
    inventory_relay_urls: tuple[str, ...] = ("http://127.0.0.1:8005",)
    order_verdicts_url: str = "http://127.0.0.1:8006"
    orders_database: str = Field(default="orders", min_length=1)
    inventory_database: str = Field(default="inventory", min_length=1)
    # The topics the consumer groups read (their lag), each with its dead-letter topic
    # (``<topic>.dlq``): every event topic of shared/contracts.py unless a test names its own.
    topics: tuple[str, ...] = Field(default=EVENT_TOPICS, min_length=1)
    groups: tuple[str, ...] = (INVENTORY_GROUP, EMAIL_GROUP, ORDER_GROUP)
    # The topics each group reads, of ``topics``: a group's lag on a topic it does not read
    # would be every record of it. A group not named here is taken to read every topic.
    group_topics: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: dict(CONSUMER_GROUP_TOPICS)
    )
    # Emails for the order timeline: the embedded SMTP sink's directory, or Mailpit's API.
    smtp_dir: Path | None = None
    mailpit_url: str | None = None
    # Jaeger's UI, for the trace link of an order (none: no link).
    jaeger_url: str | None = None
    # Overview chart: one sample every this many seconds, this many kept (10 minutes).
    sample_seconds: float = Field(default=5.0, gt=0, le=300)
    samples_kept: int = Field(default=120, ge=2, le=10_000)
    # A signed-in browser stays signed in this long.
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)

    @property
    def dlq_topics(self) -> tuple[str, ...]:
        return tuple(dlq_topic_for(topic) for topic in self.topics)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"CONSOLE_TOKEN must be at least {MIN_TOKEN_CHARS} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value
