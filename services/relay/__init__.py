"""Outbox relay: moves Pending outbox events to Kafka, in per-aggregate order, one fenced leader."""
