"""The local stack: PostgreSQL, Kafka (KRaft), Kafka Connect + Debezium and a DynamoDB endpoint,
run as plain processes for development and tests."""

from replicator.stack.local import LocalStack

__all__ = ["LocalStack"]
