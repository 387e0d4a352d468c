"""Contracts and plumbing every service of the outbox reference implementation uses.

Topic names, header names, the event envelope, settings, error classification and the
Kafka/Redis/MongoDB helpers live here once, so the services cannot drift apart.
"""
