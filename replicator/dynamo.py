"""DynamoDB clients built once from the settings: boto3's for everything, and the sink's writer."""

from __future__ import annotations

from typing import Any, Protocol

import boto3
from botocore.config import Config

from replicator.config import DynamoSettings
from replicator.dynamo_wire import DynamoWireClient


class DynamoWriter(Protocol):
    """The three calls DynamoSink makes, with boto3's request and error shapes."""

    def put_item(self, **request: Any) -> Any: ...

    def update_item(self, **request: Any) -> Any: ...

    def transact_write_items(self, **request: Any) -> Any: ...


def dynamodb_client(
    settings: DynamoSettings,
    max_pool: int = 16,
    *,
    max_attempts: int | None = None,
    connect_timeout_s: float = 5,
    read_timeout_s: float = 30,
) -> Any:
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        # botocore's standard mode: jittered exponential backoff on throttling and 5xx.
        config=Config(
            retries={"mode": "standard", "max_attempts": max_attempts or settings.max_attempts},
            max_pool_connections=max_pool,
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        ),
    )


def dynamodb_writer(settings: DynamoSettings, max_pool: int = 16) -> DynamoWriter:
    """The client the sink writes with: the lean wire client by default, boto3's on request
    (``dynamodb.client: boto3``). Both take the same requests and raise the same errors."""
    if settings.client == "wire":
        return DynamoWireClient.from_settings(settings, max_pool)
    return dynamodb_client(settings, max_pool)  # type: ignore[no-any-return]
