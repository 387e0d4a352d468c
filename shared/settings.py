"""Settings shared by every service: where the infrastructure is and how the process behaves.

Infrastructure addresses are read from un-prefixed variables (``MONGO_URI``,
``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``SMTP_HOST``, ``SMTP_PORT``) because all four
services share them; each service subclasses :class:`ServiceSettings` with its own ``env_prefix``
for its own knobs (``ORDER_PORT``, ``RELAY_BATCH_SIZE`` ...). Settings are built at start-up by
the entry point, never as module-level singletons, so tests pass their own.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import (
    AliasChoices,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.backoff import Backoff
from shared.redaction import redact
from shared.slots import DEFAULT_RELAY_SLOTS, MAX_RELAY_SLOTS, SLOTS_ENV

# Defaults point at the embedded stack (`python -m stack up`); SecantusDB advertises a
# single-node replica set named "secantus". A real deployment sets MONGO_URI to its own set.
DEFAULT_MONGO_URI = "mongodb://127.0.0.1:27017/?replicaSet=secantus"


# What each URI setting must start with; anything else is refused at start-up, not at first use.
_URI_SCHEMES = {
    "mongo_uri": ("mongodb://", "mongodb+srv://"),
    "redis_url": ("redis://", "rediss://", "unix://"),
}

S = TypeVar("S", bound=BaseSettings)


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


def _variable(settings: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` (``MONGO_URI``, ``RELAY_PORT`` ...).

    ``field`` is a field name, or the alias pydantic reports when the value came from it.
    """
    for name, candidate in settings.model_fields.items():
        alias = candidate.validation_alias
        if isinstance(alias, AliasChoices) and field in alias.choices:
            field = name
            break
    info = settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        first = info.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    prefix = str(settings.model_config.get("env_prefix") or "")
    return f"{prefix}{field}".upper()


def describe_settings_error(settings: type[BaseSettings], error: ValidationError) -> str:
    """One line per problem, naming the environment variable, with no input value in it.

    pydantic's own message quotes the offending input, and for a check across fields the whole
    input (every ``MONGO_URI``/``REDIS_URL`` with its password). This one never quotes an input;
    a validator that wants to show a URI shows it through :func:`~shared.redaction.redact`.
    """
    lines = [f"invalid {settings.__name__} ({error.error_count()} problem(s)):"]
    for problem in error.errors(include_url=False, include_input=False, include_context=False):
        loc = problem["loc"]
        where = _variable(settings, str(loc[0])) if loc else "settings"
        where += "".join(f".{part}" for part in loc[1:])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {redact(message)}")
    return "\n".join(lines)


def load_settings_or_exit(settings: type[S]) -> S:
    """Build ``settings`` from the environment; on a validation error, say what is wrong on
    stderr (redacted, see :func:`describe_settings_error`) and exit 2, without a traceback.

    For entry points only: a library caller wants the ``ValidationError``.
    """
    try:
        return settings()
    except ValidationError as error:
        sys.stderr.write(describe_settings_error(settings, error) + "\n")
        raise SystemExit(2) from None


class InfraSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    environment: Literal["local", "test", "production"] = Field(
        default="local", validation_alias=_env("ENVIRONMENT")
    )
    mongo_uri: str = Field(default=DEFAULT_MONGO_URI, validation_alias=_env("MONGO_URI"))
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS")
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    smtp_host: str = Field(default="127.0.0.1", validation_alias=_env("SMTP_HOST"))
    smtp_port: int = Field(default=1025, ge=1, le=65535, validation_alias=_env("SMTP_PORT"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias=_env("LOG_LEVEL")
    )
    # OTLP/HTTP collector (e.g. Jaeger's http://127.0.0.1:4318); unset = tracing off
    # (shared/tracing.py). The standard OpenTelemetry variable name.
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias=_env("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    # Every network call has a deadline: a dead dependency must surface as an error, not a hang.
    mongo_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, validation_alias=_env("MONGO_TIMEOUT_SECONDS")
    )

    @field_validator(*_URI_SCHEMES, mode="after")
    @classmethod
    def _known_scheme(cls, value: str, info: ValidationInfo) -> str:
        schemes = _URI_SCHEMES[str(info.field_name)]
        if not value.startswith(schemes):
            # The value is quoted through redact(): a URI here may carry a password.
            raise ValueError(f"must start with {' or '.join(schemes)}, got {redact(value)!r}")
        return value


class RelaySlotsSetting(BaseSettings):
    """``RELAY_SLOTS``: how many slots the outbox is divided into (see :mod:`shared.slots`).

    Read by the order API (it stores each event's slot at insert, in the order's transaction)
    and by every relay (each publishes the slots it holds), so it is one un-prefixed name for
    both. A deployment-time constant: changing it is a migration (docs/operating/scaling.md).
    """

    relay_slots: int = Field(
        default=DEFAULT_RELAY_SLOTS,
        ge=1,
        le=MAX_RELAY_SLOTS,
        validation_alias=_env(SLOTS_ENV),
    )


class ServiceSettings(InfraSettings):
    """Base of each service's settings; subclasses set ``env_prefix`` (``ORDER_`` ...)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # How long SIGTERM may take: finish in-flight work, commit, close. Compose's
    # stop_grace_period is a few seconds longer so the drain is never cut short.
    drain_seconds: float = Field(default=30.0, gt=0, le=300)
    # Test-only crash points ("after_kafka_ack", ...): the process exits at that instant so the
    # failure-injection suite can prove recovery. Armed only with the explicit opt-in below.
    failpoint: str | None = None
    # The opt-in for failpoints. ENVIRONMENT cannot be it: its default and compose's value are
    # "local", so a stray RELAY_FAILPOINT would crash a service mid-batch. Only the test stack
    # (StackConfig.for_tests) sets it; `make up`, the demo and compose never do. Read without the
    # service prefix because the test stack sets it for every service at once.
    enable_failpoints: bool = Field(default=False, validation_alias=_env("ENABLE_FAILPOINTS"))
    # Retry pacing while a dependency (Kafka, MongoDB, Redis, SMTP) is down: capped exponential
    # backoff with jitter. The cap keeps recovery within seconds of the dependency's return
    # without a busy loop or a log line per attempt.
    backoff_initial_seconds: float = Field(default=0.1, gt=0, le=60)
    backoff_max_seconds: float = Field(default=5.0, gt=0, le=300)

    def backoff(self) -> Backoff:
        """A fresh :class:`~shared.backoff.Backoff` with this service's pacing."""
        return Backoff(initial=self.backoff_initial_seconds, maximum=self.backoff_max_seconds)

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> ServiceSettings:
        if self.failpoint and not self.enable_failpoints:
            raise ValueError(
                f"failpoint {self.failpoint!r} is set but failpoints are off: they need "
                "ENABLE_FAILPOINTS=true, which only the test suite sets"
            )
        if self.environment == "production":
            if self.enable_failpoints:
                raise ValueError("ENABLE_FAILPOINTS must not be set when ENVIRONMENT=production")
            if "replicaSet=" not in self.mongo_uri and not self.mongo_uri.startswith("mongodb+srv"):
                raise ValueError(
                    "MONGO_URI must name a replica set in production: transactions need one"
                )
        return self
