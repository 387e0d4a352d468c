"""The indexes the order API creates at start-up, and the one migration they have had.

Idempotency-Keys were once global (a unique index on ``idempotencyKey`` alone); they are now
scoped to the caller (unique on ``(userId, idempotencyKey)``). A deployment that still has the
old index is migrated here, automatically and with a warning: the new index is built first (while
the stricter old one still holds, so no duplicate can slip in between), then the old one is
dropped. Without that drop the old index would keep refusing a second user's key with a
DuplicateKeyError that the per-user replay cannot resolve.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from services.order.models import LEGACY_IDEMPOTENCY_KEY_SPEC, Order, OutboxEvent, order_indexes
from services.order.settings import OrderSettings
from shared.mongo import ensure_indexes
from shared.outbox import ensure_outbox_indexes

log = logging.getLogger(__name__)

# IndexNotFound: another API instance dropped the legacy index first.
_INDEX_NOT_FOUND: Final = 27


async def ensure_order_indexes(
    database: AsyncDatabase[dict[str, Any]], settings: OrderSettings
) -> None:
    """Create the orders' and the outbox's indexes and retire the global key index; idempotent.

    A conflicting index raises :class:`shared.mongo.IndexConflict` (never swallowed).
    """
    orders = database[Order.Settings.name]
    await ensure_indexes(orders, order_indexes())
    await _drop_global_key_index(orders)
    await ensure_outbox_indexes(
        database[OutboxEvent.Settings.name], settings.outbox_published_ttl_seconds
    )


async def _drop_global_key_index(orders: AsyncCollection[dict[str, Any]]) -> None:
    legacy = [
        name
        for name, info in (await orders.index_information()).items()
        if dict(info["key"]) == LEGACY_IDEMPOTENCY_KEY_SPEC and info.get("unique")
    ]
    for name in legacy:
        log.warning(
            f"dropping index {name}: it made Idempotency-Keys global; they are now scoped to "
            "the userId of the request",
            extra={"collection": orders.full_name, "index": name},
        )
        try:
            await orders.drop_index(name)
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:
                raise
