"""Without an OTLP endpoint tracing is off: nothing is installed and the span helpers do nothing."""

from __future__ import annotations

from opentelemetry import trace

from shared import tracing


def test_without_an_endpoint_tracing_is_off_and_costs_nothing() -> None:
    configured = tracing.configure_tracing("unit", None)
    assert not configured.enabled
    assert tracing.current_traceparent() is None
    with tracing.batch_span(3) as batch:
        assert batch is trace.INVALID_SPAN
        span = tracing.event_span("00-" + "1" * 32 + "-" + "2" * 16 + "-01", "t", "e", batch)
        assert span is trace.INVALID_SPAN
    with tracing.record_span("svc", [], "t", 0, 0) as record:
        assert record is trace.INVALID_SPAN
    configured.shutdown()


def test_a_malformed_traceparent_names_no_context() -> None:
    assert tracing.context_of(None) is None
    assert tracing.context_of("not-a-traceparent") is None
    valid = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    context = tracing.context_of(valid)
    assert context is not None
    assert trace.get_current_span(context).get_span_context().trace_id == int("a" * 32, 16)
