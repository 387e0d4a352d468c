#!/bin/bash
# One-shot `kafka-init` service of docker-compose.yml: creates the topics the services use.
#
# The broker runs with auto.create.topics.enable=false (as the embedded stack does), so a mistyped
# topic name is an error instead of a silent new topic; the topics therefore have to be created
# before any service starts. --if-not-exists makes this idempotent: on a second `docker compose up`
# with the named volume kept, the topics are already there and this exits 0.
#
# TOPICS, PARTITIONS, REPLICATION_FACTOR, MIN_INSYNC_REPLICAS and BOOTSTRAP come from the compose
# file, where tests/unit/compose checks them against shared.contracts (ALL_TOPICS,
# TOPIC_PARTITIONS) and shared.kafka.TopicReplication (1 and 1 on one broker, 3 and 2 on the
# `ha` profile's three nodes).
set -euo pipefail

: "${BOOTSTRAP:?BOOTSTRAP must be set, e.g. kafka:9092}"
: "${TOPICS:?TOPICS must be set (space-separated)}"
: "${PARTITIONS:?PARTITIONS must be set}"
: "${REPLICATION_FACTOR:?REPLICATION_FACTOR must be set}"
: "${MIN_INSYNC_REPLICAS:?MIN_INSYNC_REPLICAS must be set}"

KAFKA_TOPICS=/opt/kafka/bin/kafka-topics.sh

for topic in ${TOPICS}; do
  "${KAFKA_TOPICS}" --bootstrap-server "${BOOTSTRAP}" --create --if-not-exists \
    --topic "${topic}" --partitions "${PARTITIONS}" --replication-factor "${REPLICATION_FACTOR}" \
    --config "min.insync.replicas=${MIN_INSYNC_REPLICAS}" \
    --config unclean.leader.election.enable=false
done

# Show what exists, so the compose log proves the partition counts.
"${KAFKA_TOPICS}" --bootstrap-server "${BOOTSTRAP}" --describe --topic "${TOPICS// /|}" \
  | grep -E '^Topic:' || true
