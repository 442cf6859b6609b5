"""The boto3 DynamoDB client, built once from the settings."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from replicator.config import DynamoSettings


def dynamodb_client(settings: DynamoSettings, max_pool: int = 16) -> Any:
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        # botocore's standard mode: jittered exponential backoff on throttling and 5xx.
        config=Config(
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            max_pool_connections=max_pool,
            connect_timeout=5,
            read_timeout=30,
        ),
    )
