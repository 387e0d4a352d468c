"""Versions of the servers the embedded stack runs, mirrored by ``docker-compose.yml``.

One place for each fact: the stack supervisor imports these, and the compose tests
(``tests/unit/compose``) fail when the compose image tags or ``stack/pom.xml``'s
``<kafka.version>`` drift from them, so ``make up`` and ``docker compose up`` run the same servers.
Free of side effects on purpose: importing it must never start or download anything.
"""

from __future__ import annotations

from typing import Final

# Apache Kafka, KRaft mode: Maven coordinates org.apache.kafka:kafka_2.13 (stack/pom.xml) and the
# official image apache/kafka:<this> in docker-compose.yml.
KAFKA_VERSION: Final = "4.1.1"

# Debian bookworm's redis-server, which `make setup` installs with apt-get; the official image
# redis:<this> in docker-compose.yml.
REDIS_VERSION: Final = "7.0.15"

# The embedded stack runs SecantusDB (a MongoDB wire-protocol stand-in), so there is no mongod
# version to match; this is the MongoDB release line compose runs (official image mongo:<this>),
# the one the services' transactions and change streams are written against.
MONGO_IMAGE_VERSION: Final = "8.0"
