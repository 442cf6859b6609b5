"""A lean DynamoDB client for the sink's four write calls, speaking DynamoDB's JSON 1.0 protocol.

boto3 spends ~0.8 ms of CPU on one conditional PutItem: it validates the request against the
service model, serializes it shape by shape, runs its event hooks and parses the response the
same way. The sink's requests are already in DynamoDB's wire format (``{"S": ...}``,
``{"N": "1.50"}``), so this client only dumps them with orjson, signs them with botocore's own
SigV4 signer and sends them over a pooled keep-alive urllib3 connection.

It takes exactly the request dicts that boto3's ``put_item``, ``update_item``,
``transact_write_items`` and ``batch_write_item`` take, and fails the way boto3 does:
``botocore.exceptions.ClientError`` with ``response["Error"]["Code"]`` (and
``response["CancellationReasons"]`` for a cancelled transaction), and a ``BotoCoreError``
subclass when the endpoint cannot be reached. Throttling, 5xx answers and connection errors
are retried by the replicator's retry policy (``replicator.stream.retry``: capped exponential
backoff with full jitter, a number of attempts and a deadline per request), as the sink's
boto3 client is.

Differences from boto3, none of which the sink depends on: no parameter validation (DynamoDB
answers a malformed request with a ValidationException), and responses are returned as sent
(binary values stay base64 text).
"""

from __future__ import annotations

import base64
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
import orjson
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.httpsession import get_cert_path
from urllib3 import exceptions as http_errors

from replicator.config import DynamoSettings
from replicator.errors import ConfigError
from replicator.stream.retry import RetryPolicy

_TARGET = "DynamoDB_20120810."
_CONTENT_TYPE = "application/x-amz-json-1.0"
# DynamoDB refusing for throughput: counted (replicator_dynamodb_throttled_requests_total).
THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)
# Retried with backoff, as botocore's standard mode retries them for DynamoDB.
RETRYABLE_CODES = THROTTLE_CODES | {
    "TransactionInProgressException",  # a retried transaction whose first try still runs
}


class DynamoWireClient:
    """PutItem, UpdateItem, TransactWriteItems and BatchWriteItem over DynamoDB's JSON protocol.

    Thread-safe: the connection pool hands each request its own connection (at most
    ``max_pool``, further callers wait for one), and each call keeps its retry state to itself.
    """

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Credentials,
        *,
        retry: RetryPolicy | None = None,
        max_pool: int = 16,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
    ) -> None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint_url {endpoint_url!r} is not an http(s) URL")
        self.endpoint_url = endpoint_url
        self.region = region
        self._credentials = credentials
        self._signer: tuple[ReadOnlyCredentials, SigV4Auth] | None = None
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"
        self._path = parts.path or "/"
        self._host = parts.netloc  # what SigV4 signs and what we send (default ports elided)
        if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
            self._host = parts.hostname
        pool_args: dict[str, Any] = {
            "maxsize": max_pool,
            "block": True,
            "timeout": urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
            "retries": False,
        }
        if parts.scheme == "https":
            pool_args.update(cert_reqs="CERT_REQUIRED", ca_certs=get_cert_path(True))
        self._pool = urllib3.connection_from_url(endpoint_url, **pool_args)
        self.retry = retry or RetryPolicy()

    @classmethod
    def from_settings(
        cls, settings: DynamoSettings, max_pool: int = 16, retry: RetryPolicy | None = None
    ) -> DynamoWireClient:
        """The client for the configured endpoint (or the region's AWS endpoint), with the
        configured keys or else botocore's usual credential chain (environment, profile,
        instance role), refreshed as botocore refreshes them."""
        secret = (
            settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
        )
        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=secret,
            region_name=settings.region,
        )
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigError(
                "no AWS credentials for DynamoDB: set dynamodb.access_key_id and "
                "secret_access_key, or provide them the usual AWS way (environment, profile, role)"
            )
        return cls(
            settings.endpoint_url or regional_endpoint(settings.region),
            settings.region,
            credentials,
            retry=retry or RetryPolicy.from_settings(settings),
            max_pool=max_pool,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
        )

    # --- the four calls the sinks make ---------------------------------------------------

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._call("PutItem", request)

    def update_item(self, **request: Any) -> dict[str, Any]:
        return self._call("UpdateItem", request)

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        if "ClientRequestToken" not in request:
            # As botocore does: retries of this call are then idempotent on DynamoDB's side.
            request["ClientRequestToken"] = str(uuid.uuid4())
        return self._call("TransactWriteItems", request)

    def batch_write_item(self, **request: Any) -> dict[str, Any]:
        return self._call("BatchWriteItem", request)

    def close(self) -> None:
        self._pool.close()

    # --- one call ---------------------------------------------------------------------------

    def _call(self, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(request, default=_json_default)
        return send_with_retries(self.retry, lambda: self._send(operation, body))

    def _send(self, operation: str, body: bytes) -> dict[str, Any]:
        request = AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={
                "Host": self._host,
                "Content-Type": _CONTENT_TYPE,
                "X-Amz-Target": _TARGET + operation,
            },
        )
        self._sign(request)
        headers = dict(request.headers.items())
        headers["User-Agent"] = "replicator-dynamo-wire"
        try:
            response = self._pool.urlopen(
                "POST",
                self._path,
                body=body,
                headers=headers,
                retries=False,
                redirect=False,
                preload_content=True,
            )
        except http_errors.HTTPError as exc:
            raise _transport_error(self.endpoint_url, exc) from exc
        data = response.data
        expected_crc = response.headers.get("x-amz-crc32")
        if expected_crc is not None and int(expected_crc) != zlib.crc32(data):
            raise ChecksumError(
                checksum_type="crc32",
                expected_checksum=expected_crc,
                actual_checksum=zlib.crc32(data),
            )
        metadata = {
            "RequestId": response.headers.get("x-amzn-RequestId", ""),
            "HTTPStatusCode": response.status,
        }
        if response.status < 300:
            parsed = orjson.loads(data) if data else {}
            parsed["ResponseMetadata"] = metadata
            return parsed  # type: ignore[no-any-return]
        raise ClientError(_error_response(response.status, data, metadata), operation)

    def _sign(self, request: AWSRequest) -> None:
        frozen = self._credentials.get_frozen_credentials()  # refreshes expiring credentials
        signer = self._signer
        if signer is None or signer[0] != frozen:
            signer = (frozen, SigV4Auth(frozen, "dynamodb", self.region))
            self._signer = signer
        signer[1].add_auth(request)


def send_with_retries(retry: RetryPolicy, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``send()`` by the retry policy: throttling, 5xx answers and transport failures are tried
    again (``is_retryable``). Throttled attempts are counted in the answer's
    ``ResponseMetadata.ThrottledAttempts``, for the sink's throttle metric."""
    started = retry.clock()
    try:  # the common case without the retry controller's few microseconds
        return send()
    except (ClientError, BotoCoreError) as exc:
        if not is_retryable(exc):
            raise
        first: BaseException | None = exc

    throttled = 0

    def attempt() -> dict[str, Any]:
        nonlocal first, throttled
        try:
            if first is not None:  # replay the first failure, so it counts and backs off
                failed, first = first, None
                raise failed
            return send()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in THROTTLE_CODES:
                throttled += 1
            raise

    response = retry.call(attempt, is_retryable, started)
    if throttled:
        response.setdefault("ResponseMetadata", {})["ThrottledAttempts"] = throttled
    return response


def regional_endpoint(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://dynamodb.{region}.{suffix}"


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx answers and transport failures; never a refused request."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return exc.response.get("Error", {}).get("Code") in RETRYABLE_CODES or status >= 500
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not go away by retrying
    return isinstance(exc, BotoConnectionError | HTTPClientError | ChecksumError)


def _error_response(status: int, data: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
    """botocore's JSON-protocol error shape: Error.Code from ``__type`` (after '#'), the
    exception's own members (CancellationReasons, Item, ...) at the top level."""
    try:
        body = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):  # e.g. a proxy's HTML page
        text = data.decode("utf-8", "replace")[:500]
        return {"Error": {"Code": str(status), "Message": text}, "ResponseMetadata": metadata}
    code = str(body.pop("__type", status)).split(":", 1)[0].rsplit("#", 1)[-1]
    message = body.pop("message", body.pop("Message", ""))
    return {**body, "Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}


def _transport_error(endpoint_url: str, exc: http_errors.HTTPError) -> BotoCoreError:
    """urllib3's failure as the botocore exception boto3 would raise for it."""
    if isinstance(exc, http_errors.NewConnectionError | http_errors.NameResolutionError):
        return EndpointConnectionError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, http_errors.ConnectTimeoutError):
        return ConnectTimeoutError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, http_errors.ReadTimeoutError):
        return ReadTimeoutError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, http_errors.SSLError):
        return SSLError(endpoint_url=endpoint_url, error=exc)
    if isinstance(exc, http_errors.ProtocolError):
        return ConnectionClosedError(endpoint_url=endpoint_url, error=exc)
    return HTTPClientError(error=exc)


def _json_default(value: Any) -> Any:
    """What orjson cannot dump itself: binary values (base64 on the wire) and sets."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not a DynamoDB JSON value")
