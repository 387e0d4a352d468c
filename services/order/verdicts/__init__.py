"""The order service's consumer of inventory's verdicts (``python -m services.order.verdicts``).

It follows ``inventory.reserved``, ``inventory.rejected`` and ``inventory.released`` and moves
each order through :mod:`services.order.lifecycle`, on the engine every consumer uses
(:mod:`shared.consumer`: claim, dedup keys, DLQ, lease renewal, drain on SIGTERM).
"""
