#!/bin/bash
# One-shot `kafka-init` service of docker-compose.yml: creates the topics the services use.
#
# The broker runs with auto.create.topics.enable=false (as the embedded stack does), so a mistyped
# topic name is an error instead of a silent new topic; the topics therefore have to be created
# before any service starts. --if-not-exists makes this idempotent: on a second `docker compose up`
# with the named volume kept, the topics are already there and this exits 0.
#
# TOPICS, PARTITIONS, REPLICATION_FACTOR, MIN_INSYNC_REPLICAS, DLQ_RETENTION_MS and BOOTSTRAP come
# from the compose file, where tests/unit/compose checks them against shared.contracts (ALL_TOPICS,
# TOPIC_PARTITIONS, DLQ_RETENTION_SECONDS) and shared.kafka.TopicReplication (1 and 1 on one
# broker, 3 and 2 on the `ha` profile's three nodes).
#
# Every `*.dlq` topic keeps its records DLQ_RETENTION_MS, as shared.kafka.topic_config does in the
# embedded stack: the email service's per-order state (ORDER_STATE_TTL_SECONDS) is sized to outlive
# a replay at the end of that retention, so the broker's default must not decide it.
set -euo pipefail

: "${BOOTSTRAP:?BOOTSTRAP must be set, e.g. kafka:9092}"
: "${TOPICS:?TOPICS must be set (space-separated)}"
: "${PARTITIONS:?PARTITIONS must be set}"
: "${REPLICATION_FACTOR:?REPLICATION_FACTOR must be set}"
: "${MIN_INSYNC_REPLICAS:?MIN_INSYNC_REPLICAS must be set}"
: "${DLQ_RETENTION_MS:?DLQ_RETENTION_MS must be set (shared.contracts.DLQ_RETENTION_SECONDS * 1000)}"

# The image's tool; tests/unit/compose runs this script with a stand-in that records its arguments.
KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"

for topic in ${TOPICS}; do
  configs=(--config "min.insync.replicas=${MIN_INSYNC_REPLICAS}"
    --config unclean.leader.election.enable=false)
  if [[ "${topic}" == *.dlq ]]; then
    configs+=(--config "retention.ms=${DLQ_RETENTION_MS}")
  fi
  "${KAFKA_TOPICS}" --bootstrap-server "${BOOTSTRAP}" --create --if-not-exists \
    --topic "${topic}" --partitions "${PARTITIONS}" --replication-factor "${REPLICATION_FACTOR}" \
    "${configs[@]}"
done

# Show what exists, so the compose log proves the partition counts.
"${KAFKA_TOPICS}" --bootstrap-server "${BOOTSTRAP}" --describe --topic "${TOPICS// /|}" \
  | grep -E '^Topic:' || true
