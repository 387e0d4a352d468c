"""Prometheus metrics of the order API, on a registry of its own.

A registry per app (not prometheus_client's global one) lets tests build several apps in one
process without "duplicated timeseries" errors, and keeps /metrics to this service's series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.health import readiness_gauge

# Buckets around what a two-insert majority transaction costs (milliseconds on a local replica
# set) up to the 5 s deadline after which the API answers 503.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class OrderMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.orders_created = Counter(
            "orders_created_total",
            "Orders committed together with their OrderCreated outbox event.",
            registry=self.registry,
        )
        self.orders_cancelled = Counter(
            "orders_cancelled_total",
            "Orders cancelled together with their OrderCancelled outbox event.",
            registry=self.registry,
        )
        self.idempotent_replays = Counter(
            "orders_idempotent_replays_total",
            "Requests answered with an existing order because of their Idempotency-Key.",
            registry=self.registry,
        )
        self.transaction_retries = Counter(
            "order_transaction_retries_total",
            "Extra attempts of the order transaction (TransientTransactionError).",
            registry=self.registry,
        )
        self.ready = readiness_gauge(self.registry)
