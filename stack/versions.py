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

# Prometheus: the official image prom/prometheus:v<this> in docker-compose.yml, and promtool from
# the Go module proxy at the matching module version (Prometheus 3.x tags its Go module v0.3xx.y:
# 3.16.0 is v0.316.0), built by `make setup` (stack/gotools.py) for the alert-rule tests.
PROMETHEUS_VERSION: Final = "3.16.0"
PROMETHEUS_MODULE_VERSION: Final = "v0.316.0"

# Jaeger v2 (the OpenTelemetry-collector based all-in-one): built from the Go module proxy for the
# embedded stack (`python -m stack up --with jaeger`); the official image jaegertracing/jaeger in
# docker-compose.yml. The Go module keeps v1 tags: v1.76.0 is the release of Jaeger v2.13.0.
JAEGER_MODULE_VERSION: Final = "v1.76.0"
JAEGER_IMAGE_VERSION: Final = "2.13.0"

# Toxiproxy (Shopify's TCP fault proxy): built from the Go module proxy (stack/gotools.py) for the
# failure-injection suite's proxied links; not part of the compose file.
TOXIPROXY_VERSION: Final = "v2.12.0"

# Keycloak (the optional identity provider): org.keycloak:keycloak-quarkus-dist:<this> from Maven
# Central for the embedded stack (`python -m stack up --with keycloak`, stack/keycloak), the
# official image quay.io/keycloak/keycloak:<this> in docker-compose.yml.
KEYCLOAK_VERSION: Final = "26.7.3"
