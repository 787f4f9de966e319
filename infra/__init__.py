"""The local stack (Redis, a Kafka-protocol broker, a CQL server), topics and CQL schema."""
