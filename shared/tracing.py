"""OpenTelemetry tracing for the services: one trace from ``POST /orders`` through the verdict
loop to the email.

* The order API's request span (FastAPI instrumentation) is the trace's root; its W3C context is
  what the outbox event stores as ``traceparent`` (:func:`current_traceparent`).
* The relay publishes each event in a span whose parent is that stored context, linked to the
  span of the batch it travelled in (:func:`event_span` inside :func:`batch_span`).
* A consumer handles a record in a span whose parent is the record's ``traceparent`` header
  (:func:`record_span`); the reservation transaction and the SMTP send are its children.

Off unless an OTLP endpoint is configured (``OTEL_EXPORTER_OTLP_ENDPOINT``, read by the
services' settings): then no SDK is imported or installed, and every helper here returns at once
with the API's invalid span; nothing is exported, buffered or sent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.contracts import Header
from shared.redaction import SECRET_HEADERS

log = logging.getLogger(__name__)

TRACER_NAME: Final = "outbox-reference"
_PROPAGATOR: Final = TraceContextTextMapPropagator()
# Set once the SDK is installed; the per-record helpers return at once while it is False.
_enabled = False


class Tracing:
    """The SDK provider of this process (``None`` when tracing is off); flush it on exit."""

    def __init__(self, provider: Any | None) -> None:
        self._provider = provider

    @property
    def enabled(self) -> bool:
        return self._provider is not None

    def shutdown(self) -> None:
        """Export what is buffered (bounded by the exporter's timeout) and stop."""
        if self._provider is not None:
            self._provider.shutdown()


def configure_tracing(service: str, endpoint: str | None) -> Tracing:
    """Install the SDK with an OTLP/HTTP exporter to ``endpoint`` (the collector's base URL);
    with no endpoint, nothing. ``service`` becomes the ``service.name`` resource attribute; the
    standard ``OTEL_BSP_*`` variables tune the batch processor."""
    global _enabled
    if not endpoint:
        return Tracing(None)
    # Imported here so a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("tracing on", extra={"endpoint": endpoint})
    return Tracing(provider)


@contextlib.contextmanager
def traced(service: str, endpoint: str | None) -> Iterator[Tracing]:
    """Tracing for the lifetime of a process's main: configured on entry, flushed on exit."""
    tracing = configure_tracing(service, endpoint)
    try:
        yield tracing
    finally:
        tracing.shutdown()


def instrument_fastapi(app: Any) -> None:
    """Server spans for every request of ``app`` (when tracing is on)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # Credentials never become span attributes, even when request-header capture is switched on
    # (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST): their values are "[REDACTED]".
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="healthz,readyz,metrics",
        http_capture_headers_sanitize_fields=list(SECRET_HEADERS),
    )


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or ``None`` when no span is recording."""
    if not _enabled:
        return None
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """The context a ``traceparent`` names (``None`` for a missing or malformed one)."""
    if not traceparent:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


class _NoSpan(AbstractContextManager[Span]):
    """What the span helpers return while tracing is off: one shared object, no work at all
    (a generator-based context manager would cost microseconds per record)."""

    def __enter__(self) -> Span:
        return trace.INVALID_SPAN

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN: Final = _NoSpan()


def batch_span(size: int) -> AbstractContextManager[Span]:
    """The relay's span of one batch (its own trace: it carries events of many orders)."""
    if not _enabled:
        return _NO_SPAN
    return tracer().start_as_current_span(
        "relay publish batch",
        context=otel_context.Context(),
        kind=SpanKind.INTERNAL,
        attributes={"messaging.batch.message_count": size},
    )


def event_span(traceparent: str | None, topic: str, event_id: str, batch: Span) -> Span:
    """An unstarted-context span for publishing one event: child of the event's stored context,
    linked to ``batch``. The caller ends it (``end_span``) once Kafka answered."""
    if not _enabled:
        return trace.INVALID_SPAN
    return tracer().start_span(
        f"publish {topic}",
        context=context_of(traceparent) or otel_context.Context(),
        kind=SpanKind.PRODUCER,
        links=[Link(batch.get_span_context())],
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.message.id": event_id,
        },
    )


def end_span(span: Span, error: BaseException | None) -> None:
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def record_span(
    service: str,
    headers: Iterable[tuple[str, bytes]] | None,
    topic: str,
    partition: int,
    offset: int,
) -> AbstractContextManager[Span]:
    """A consumer's handling of one record, as a child of the record's ``traceparent`` header
    (the headers are only read when tracing is on)."""
    if not _enabled:
        return _NO_SPAN
    found = (raw for name, raw in headers or () if name == Header.TRACEPARENT)
    traceparent = next((raw.decode("ascii", "replace") for raw in found), None)
    return tracer().start_as_current_span(
        f"{service} process {topic}",
        context=context_of(traceparent) or otel_context.Context(),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.kafka.destination.partition": partition,
            "messaging.kafka.message.offset": offset,
        },
    )


def step_span(name: str, **attributes: str | int) -> AbstractContextManager[Span]:
    """A child of the current span for one step (a transaction, an SMTP send)."""
    if not _enabled:
        return _NO_SPAN
    return tracer().start_as_current_span(name, attributes=attributes)
