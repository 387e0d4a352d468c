"""Outbox relay: moves Pending outbox events to Kafka, in per-aggregate order. Relays share hash
slots, each slot fenced by a lease epoch and its own Kafka transactional id."""
