"""``python -m bench.article_relay_process --database D``: the article's relay as its own process.

The port itself is :mod:`bench.article_relay` (the relay helper's); this only runs it the way our
relay runs in the end-to-end comparison, as a separate process configured by the same
environment (``MONGO_URI``, ``KAFKA_BOOTSTRAP_SERVERS``), so neither design shares a CPU-bound
event loop with the load generator. Runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import article_relay
from shared.lifecycle import stop_event_on_signals
from shared.logging import configure_logging
from shared.mongo import make_mongo_client
from shared.outbox import OUTBOX_COLLECTION
from shared.settings import InfraSettings


async def _main(database: str) -> int:
    infra = InfraSettings()
    client = make_mongo_client(infra.mongo_uri, infra.mongo_timeout_seconds, "article-relay")
    stop = stop_event_on_signals()
    try:
        await article_relay.run(
            client[database][OUTBOX_COLLECTION], infra.kafka_bootstrap_servers, stop
        )
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.article_relay_process")
    parser.add_argument("--database", required=True, help="database holding the outbox")
    args = parser.parse_args(argv)
    configure_logging("article-relay", "INFO")
    return asyncio.run(_main(args.database))


if __name__ == "__main__":
    sys.exit(main())
