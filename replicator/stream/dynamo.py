"""DynamoDB clients built once from the settings: boto3's for everything, and the sink's writer."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import boto3
from botocore.config import Config

from replicator.config import DynamoSettings
from replicator.stream.dynamo_wire import DynamoWireClient, send_with_retries
from replicator.stream.retry import RetryPolicy


class DynamoWriter(Protocol):
    """The four calls the sinks make, with boto3's request and error shapes."""

    def put_item(self, **request: Any) -> Any: ...

    def update_item(self, **request: Any) -> Any: ...

    def transact_write_items(self, **request: Any) -> Any: ...

    def batch_write_item(self, **request: Any) -> Any: ...


def dynamodb_client(
    settings: DynamoSettings,
    max_pool: int = 16,
    *,
    max_attempts: int | None = None,
    connect_timeout_s: float | None = None,
    read_timeout_s: float | None = None,
) -> Any:
    """boto3's client; attempts (the first included) and timeouts default to the settings'."""
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        # botocore's standard mode: jittered exponential backoff on throttling and 5xx.
        config=Config(
            retries={
                "mode": "standard",
                "total_max_attempts": max_attempts or settings.max_attempts,
            },
            max_pool_connections=max_pool,
            connect_timeout=connect_timeout_s or settings.connect_timeout_s,
            read_timeout=read_timeout_s or settings.read_timeout_s,
        ),
    )


class Boto3Writer:
    """boto3's client for the sink, retried by the replicator's policy instead of botocore's
    (which has neither a deadline per request nor a configurable backoff), so both writers
    back off, give up and count throttled attempts alike."""

    def __init__(self, client: Any, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    def put_item(self, **request: Any) -> dict[str, Any]:
        return send_with_retries(self.retry, lambda: self.client.put_item(**request))

    def update_item(self, **request: Any) -> dict[str, Any]:
        return send_with_retries(self.retry, lambda: self.client.update_item(**request))

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        # One token for every attempt, as botocore's own retries keep it: DynamoDB then applies
        # the transaction once even if an attempt's answer was lost.
        request.setdefault("ClientRequestToken", str(uuid.uuid4()))
        return send_with_retries(self.retry, lambda: self.client.transact_write_items(**request))

    def batch_write_item(self, **request: Any) -> dict[str, Any]:
        return send_with_retries(self.retry, lambda: self.client.batch_write_item(**request))

    def close(self) -> None:
        self.client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)  # the rest (meta, exceptions) is boto3's client's


def dynamodb_writer(
    settings: DynamoSettings, max_pool: int = 16, retry: RetryPolicy | None = None
) -> DynamoWriter:
    """The client the sink writes with: the lean wire client by default, boto3's on request
    (``dynamodb.client: boto3``). Both take the same requests, raise the same errors and retry
    by the same policy (default: the settings')."""
    retry = retry or RetryPolicy.from_settings(settings)
    if settings.client == "wire":
        return DynamoWireClient.from_settings(settings, max_pool, retry)
    return Boto3Writer(dynamodb_client(settings, max_pool, max_attempts=1), retry)
