"""The exception tree: every error the replicator raises on purpose derives from ReplicatorError."""

from __future__ import annotations


class ReplicatorError(Exception):
    """Base of every expected failure; the CLI prints these without a traceback."""


class ConfigError(ReplicatorError):
    """The settings or a table mapping are invalid."""


class DecodeError(ReplicatorError):
    """A Kafka record is not a Debezium envelope we understand. The event is dead-lettered."""


class MappingError(ReplicatorError):
    """A decoded row cannot become a DynamoDB item. The event is dead-lettered."""


class LookupMissError(MappingError):
    """An enrichment lookup found no row (for example a payment whose loan does not exist)."""


class LookupUnavailableError(ReplicatorError):
    """The lookup database did not answer: the batch waits, nothing is dead-lettered."""


class StackError(ReplicatorError):
    """A part of the local stack failed; the message names the part and its log."""


class ConnectorError(ReplicatorError):
    """Kafka Connect refused or failed a request."""


class SinkError(ReplicatorError):
    """DynamoDB writes failed after every retry; the batch is not committed."""


class SystemicSinkError(SinkError):
    """DynamoDB refuses the batch for a reason no retry fixes by itself (a missing table, a key
    schema other than the mapping's, denied access): nothing is committed, the consumer is not
    ready, and the batch is retried until an operator fixes the cause."""
