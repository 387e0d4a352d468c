"""``python -m bench``: throughput and latency of the outbox pipeline next to its baselines.

One run on one embedded stack measures the raw limits (PyMongo transaction, aiokafka producer),
this system (order API, relay, consumers, end-to-end latency, memory) and the seed article's
design (its polling relay and its GET-then-SETEX consumer), and computes every ratio from
figures of that same run. See ``docs/benchmarks.md``.
"""
