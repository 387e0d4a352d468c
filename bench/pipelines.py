"""The two designs as running pipelines, for the end-to-end and the capacity phases.

* **ours**: the whole verdict loop, each a stack process: the order API, the relay of its
  outbox, inventory (its verdict written to its own outbox), the relay of inventory's outbox,
  the order service's consumer of the verdicts and email (the confirmation or the rejection
  notice, on the verdict).
* **article**: our order API, then the article's relay and consumer (bench/article_relay.py,
  bench/article_consumer.py) as processes of their own. Its outbox keeps only the index the
  article's queries use: our API creates all of ours at start-up, and the extra ones are
  dropped before the relay starts (each would cost the article's inserts and updates for
  queries it never makes). The JSON lists the indexes left (``article_outbox_indexes``).

Each pipeline gets fresh databases and consumer groups positioned at the end of every topic
they read, so it processes only the orders sent while it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from bench.article_relay import keep_only_article_indexes
from bench.e2e_latency import seed_bench_stock
from bench.run import SUBPROCESS_READY_TIMEOUT, Run, wait_for_file
from services.email.main import email_routes
from services.email.settings import EmailSettings
from services.inventory.settings import InventorySettings
from services.order.verdicts.main import verdict_routes
from services.order.verdicts.settings import VerdictSettings
from shared.contracts import ORDER_CREATED_TOPIC
from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from stack.observe import position_groups_at_end

POSITION_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Pipeline:
    design: str
    api_url: str
    inventory_database: str
    orders_database: str
    # Whether its order service follows inventory's verdict (the order becomes confirmed or
    # rejected): the loop is then closed only once it did.
    follows_verdicts: bool = False
    # Where its events wait (the databases of its outboxes) and who reads them (consumer group
    # -> its topics): what bench/rest.py looks at before a window.
    outbox_databases: tuple[str, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


async def _groups_start_at_the_end(bootstrap: str, groups: dict[str, tuple[str, ...]]) -> None:
    """Each group (name -> the topics it reads) positioned at the end of each of its topics."""
    for group, topics in groups.items():
        for topic in topics:
            await position_groups_at_end(bootstrap, [group], topic)


@contextlib.asynccontextmanager
async def ours(run: Run, tag: str) -> AsyncIterator[Pipeline]:
    """Our six services on fresh databases; stopped (memory read first) on exit."""
    cfg = run.config
    orders_db, inventory_db = f"bench_{tag}_orders", f"bench_{tag}_inv"
    inv_group, email_group = f"bench-inv-{tag}", f"bench-email-{tag}"
    verdicts_group = f"bench-verdicts-{tag}"
    await seed_bench_stock(cfg.mongo_uri, inventory_db)
    groups = {
        # The topics each service subscribes to, as it builds them from its settings.
        inv_group: (InventorySettings().topic, InventorySettings().cancelled_topic),
        email_group: tuple(email_routes(EmailSettings())),
        verdicts_group: tuple(verdict_routes(VerdictSettings())),
    }
    await _groups_start_at_the_end(cfg.kafka_bootstrap, groups)
    started: list[str] = []
    try:
        for name, env in (
            ("order", {"ORDER_DATABASE": orders_db}),
            ("relay", {"RELAY_DATABASE": orders_db, "RELAY_TRANSACTIONAL_ID": f"bench-{tag}"}),
            ("inventory", {"INVENTORY_DATABASE": inventory_db, "INVENTORY_GROUP_ID": inv_group}),
            (
                "inventory-relay",
                {"RELAY_DATABASE": inventory_db, "RELAY_TRANSACTIONAL_ID": f"bench-inv-{tag}"},
            ),
            (
                "order-verdicts",
                {"ORDER_VERDICTS_DATABASE": orders_db, "ORDER_VERDICTS_GROUP_ID": verdicts_group},
            ),
            ("email", {"EMAIL_GROUP_ID": email_group}),
        ):
            await run.start_service(name, env)
            started.append(name)
        url = f"http://127.0.0.1:{cfg.port_of('order')}"
        yield Pipeline(
            "ours",
            url,
            inventory_db,
            orders_db,
            follows_verdicts=True,
            outbox_databases=(orders_db, inventory_db),
            groups=groups,
        )
    finally:
        for name in reversed(started):
            run.stop_service(name)


@contextlib.asynccontextmanager
async def article(run: Run, tag: str) -> AsyncIterator[Pipeline]:
    """Our order API with the article's relay and consumer; all stopped on exit."""
    cfg = run.config
    orders_db, inventory_db = f"bench_{tag}_orders", f"bench_{tag}_inv"
    group = f"bench-article-{tag}"
    await seed_bench_stock(cfg.mongo_uri, inventory_db)
    await _groups_start_at_the_end(cfg.kafka_bootstrap, {group: (ORDER_CREATED_TOPIC,)})
    await run.start_service("order", {"ORDER_DATABASE": orders_db})
    ready = cfg.root / f"article-consumer-{tag}.ready"
    try:
        client = make_mongo_client(cfg.mongo_uri, 30.0, "bench-article-indexes")
        try:
            left = await keep_only_article_indexes(client[orders_db][OUTBOX_COLLECTION])
        finally:
            await client.close()
        run.results.setdefault("article_outbox_indexes", {})[tag] = left
        consumer = run.spawn(
            "article-consumer",
            [str(cfg.python), "-m", "bench.article_consumer", "--group", group,
             "--database", inventory_db, "--offset-reset", "earliest", "--ready-file", str(ready)],
            {},
        )  # fmt: skip
        run.spawn(
            "article-relay",
            [str(cfg.python), "-m", "bench.article_relay_process", "--database", orders_db],
            {},
        )
        await wait_for_file(ready, consumer, SUBPROCESS_READY_TIMEOUT)
        yield Pipeline(
            "article",
            f"http://127.0.0.1:{cfg.port_of('order')}",
            inventory_db,
            orders_db,
            outbox_databases=(orders_db,),
            groups={group: (ORDER_CREATED_TOPIC,)},
        )
    finally:
        run.stop_all_own()
        run.stop_service("order")
