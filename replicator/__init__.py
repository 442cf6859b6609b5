"""PostgreSQL -> Debezium -> Kafka -> DynamoDB change-data-capture replicator."""

__version__ = "0.1.0"
