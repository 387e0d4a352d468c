"""Entry point and lifecycle of the inventory consumer, and the ``seed-stock`` command."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from pydantic import ValidationError
from pymongo import UpdateOne

from services.inventory.handlers import ReservationHandler
from services.inventory.models import STOCK, StockLevel, ensure_indexes
from services.inventory.settings import InventorySettings
from shared.consumer import Route, order_routes, run_consumer_service
from shared.events import OrderEvent, parse_order_cancelled, parse_order_created
from shared.mongo import make_mongo_client, ping_check
from shared.outbox import OUTBOX_COLLECTION, ensure_outbox_indexes
from shared.redis import make_redis

log = logging.getLogger(__name__)

SERVICE = "inventory"


async def run(settings: InventorySettings, stop: asyncio.Event | None = None) -> int:
    """Consume ``order.created`` and ``order.cancelled`` until SIGTERM (or ``stop``); 0 after a
    clean drain. The verdicts go into the database's outbox (published by its own relays)."""
    mongo = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "inventory")
    redis = make_redis(settings.redis_url)
    try:
        # Before the first message: the unique orderId index is the exactly-once backstop, and
        # the outbox's unique (aggregateId, aggregateVersion) index a second guard on the
        # verdicts (the relay of this database creates the same indexes).
        await ensure_indexes(mongo, settings.database)
        await ensure_outbox_indexes(
            mongo[settings.database][OUTBOX_COLLECTION], settings.outbox_published_ttl_seconds
        )
        handler = ReservationHandler(mongo, settings.database, settings.relay_slots)
        routes: dict[str, Route[OrderEvent]] = order_routes(
            settings, parse_order_created, parse_order_cancelled
        )

        return await run_consumer_service(
            settings,
            service=SERVICE,
            parse=parse_order_created,
            handler=handler.handle,
            redis=redis,
            extra_ready={"mongo": ping_check(mongo)},
            stop=stop,
            routes=routes,
        )
    finally:
        await redis.aclose()
        await mongo.close()


class SeedFileError(Exception):
    """A seed-stock file that cannot be loaded; the message names the file and the problem."""


def load_stock_file(path: Path) -> list[StockLevel]:
    """Read ``path``: a JSON object ``{"SKU-1": 100, ...}`` or a list of ``{sku, available}``.

    Raises ``SeedFileError`` naming the file and the problem; nothing is written on error.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SeedFileError(f"{path}: file not found") from exc
    except OSError as exc:
        raise SeedFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SeedFileError(f"{path}: not UTF-8 text: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SeedFileError(f"{path}: not valid JSON: {exc}") from exc
    if isinstance(document, dict):
        entries: list[object] = [{"sku": sku, "available": n} for sku, n in document.items()]
    elif isinstance(document, list):
        entries = list(document)
    else:
        raise SeedFileError(
            f"{path}: expected a JSON object {{sku: available}} or a list of "
            f'{{"sku", "available"}}, got {type(document).__name__}'
        )
    levels: list[StockLevel] = []
    for index, entry in enumerate(entries):
        try:
            levels.append(StockLevel.model_validate(entry))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}"
                for err in exc.errors()
            )
            raise SeedFileError(f"{path}: entry {index}: {problems}") from exc
    seen: set[str] = set()
    for level in levels:
        if level.sku in seen:
            raise SeedFileError(f"{path}: sku {level.sku!r} appears more than once")
        seen.add(level.sku)
    if not levels:
        raise SeedFileError(f"{path}: no stock entries")
    return levels


async def seed_stock(settings: InventorySettings, path: Path) -> int:
    """Set ``available`` of each SKU in the file (upsert), all in one bulk write after the whole
    file validated: a bad file writes nothing. Returns the number of SKUs written."""
    levels = load_stock_file(path)
    mongo = make_mongo_client(settings.mongo_uri, settings.mongo_timeout_seconds, "inventory-seed")
    try:
        await ensure_indexes(mongo, settings.database)
        await mongo[settings.database][STOCK].bulk_write(
            [
                UpdateOne({"sku": lv.sku}, {"$set": {"available": lv.available}}, upsert=True)
                for lv in levels
            ],
            ordered=True,
        )
    finally:
        await mongo.close()
    log.info("stock seeded", extra={"count": len(levels), "path": str(path)})
    return len(levels)
