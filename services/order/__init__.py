"""The order API: HTTP in, one MongoDB transaction (order + pending outbox event) out.

It never talks to Kafka; the relay publishes what this service commits to the outbox.
"""
