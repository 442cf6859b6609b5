"""The fault suite: scenarios that break a part of the stack (the consumer, the DynamoDB
endpoint, Kafka, PostgreSQL, Connect) under load and check the guarantees afterwards.

They run on the session's stack, after every other test (the collection hook below), since
they stop and restart its parts; each scenario leaves the stack healthy again (``healthy``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from replicator.cli._common import connector_payload
from replicator.config import Settings
from replicator.ops.connector import ConnectClient
from replicator.stack import LocalStack
from tests.integration import conftest as integration

# The integration suite's fixtures: one stack, one set of consumers' helpers.
settings = integration.settings
stack = integration.stack
pg = integration.pg
dynamodb = integration.dynamodb
consumer_factory = integration.consumer_factory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fault scenarios last: they break the stack the other tests share."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)


@pytest.fixture
def healthy(stack: LocalStack, settings: Settings) -> Iterator[LocalStack]:
    """Before and after a scenario: every part up and the connector's task running."""
    _restore(stack, settings)
    yield stack
    _restore(stack, settings)


def _restore(stack: LocalStack, settings: Settings) -> None:
    stack.up()  # starts only the parts that are not running
    client = ConnectClient(settings)
    client.apply(connector_payload(settings))
    client.wait_running(timeout_s=180)
