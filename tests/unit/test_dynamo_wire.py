"""The wire client against a tiny local HTTP server with canned DynamoDB answers: what it sends
(target, body, SigV4 headers that verify), and how each answer surfaces (results, ClientError
codes, cancellation reasons, retries with backoff, transport failures)."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from factories import create_record, log_row, update_record

from replicator.config import DynamoSettings, default_tables
from replicator.core.decode import decode
from replicator.core.events import ChangeEvent
from replicator.errors import SystemicSinkError
from replicator.stream.dynamo import dynamodb_client, dynamodb_writer
from replicator.stream.dynamo_wire import DynamoWireClient
from replicator.stream.pipeline import to_change
from replicator.stream.retry import RetryPolicy
from replicator.stream.sink import DynamoSink, plan

LOGS = "dbo.integrationlogs"
MAPPINGS = {m.source: m for m in default_tables()}
KEY_ID, SECRET = "AKIDTEST", "secret-test"
TYPE = "com.amazonaws.dynamodb.v20120810#"
PUT = {
    "TableName": "T",
    "Item": {"PK": {"S": "a"}, "Amount": {"N": "0.10"}, "Zoe": {"S": "Zoë 🙂"}},
    "ConditionExpression": "attribute_not_exists(#pos) OR #pos < :pos",
    "ExpressionAttributeNames": {"#pos": "_pos"},
    "ExpressionAttributeValues": {":pos": {"S": "0001"}},
}


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"{}"
    crc: str | None = "auto"  # "auto": the body's CRC32, as DynamoDB sends it
    drop: bool = False  # close the connection without answering


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return orjson.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Endpoint:
    """Answers requests with the scripted answers in order, then with ``default``."""

    url: str = ""
    script: list[Answer | Callable[[Seen], Answer]] = field(default_factory=list)
    default: Answer | Callable[[Seen], Answer] = field(default_factory=Answer)
    seen: list[Seen] = field(default_factory=list)
    connections: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_answer(self, request: Seen) -> Answer:
        with self.lock:
            self.seen.append(request)
            answer = self.script.pop(0) if self.script else self.default
        return answer(request) if callable(answer) else answer


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    state = Endpoint()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as DynamoDB

        def setup(self) -> None:
            super().setup()  # headers and body go out in two writes: no Nagle delay between
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            state.connections.add(id(self.connection))
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer = state.next_answer(Seen(self.path, dict(self.headers.items()), body))
            if answer.drop:
                self.close_connection = True
                return
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("x-amzn-RequestId", "REQ1")
            if answer.crc == "auto":
                self.send_header("x-amz-crc32", str(zlib.crc32(answer.body)))
            elif answer.crc is not None:
                self.send_header("x-amz-crc32", answer.crc)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def client(
    url: str,
    sleeps: list[float] | None = None,
    token: str | None = None,
    *,
    max_attempts: int = 10,
    backoff_base_s: float = 0.05,
    backoff_cap_s: float = 5.0,
    **kwargs: Any,
) -> DynamoWireClient:
    """The wire client; its retry policy records its waits in ``sleeps`` instead of sleeping."""
    recorded = sleeps if sleeps is not None else []
    retry = RetryPolicy(
        attempts=max_attempts, base_s=backoff_base_s, cap_s=backoff_cap_s, sleep=recorded.append
    )
    return DynamoWireClient(
        url, "eu-west-1", Credentials(KEY_ID, SECRET, token), retry=retry, **kwargs
    )


def error(code: str, message: str = "no", status: int = 400, **members: Any) -> Answer:
    return Answer(status, orjson.dumps({"__type": TYPE + code, "message": message, **members}))


# --- what goes on the wire --------------------------------------------------------------------


def test_put_item_posts_the_request_as_dynamodb_json(endpoint: Endpoint) -> None:
    endpoint.default = Answer(body=b'{"ConsumedCapacity": {"TableName": "T", "CapacityUnits": 1}}')
    result = client(endpoint.url).put_item(**PUT)
    (seen,) = endpoint.seen
    assert seen.path == "/"
    assert seen.headers["X-Amz-Target"] == "DynamoDB_20120810.PutItem"
    assert seen.headers["Content-Type"] == "application/x-amz-json-1.0"
    assert seen.json == PUT  # numbers stay strings, unicode intact
    assert result["ConsumedCapacity"] == {"TableName": "T", "CapacityUnits": 1}
    assert result["ResponseMetadata"] == {"RequestId": "REQ1", "HTTPStatusCode": 200}


def test_update_and_transaction_targets(endpoint: Endpoint) -> None:
    c = client(endpoint.url)
    update = {
        "TableName": "T",
        "Key": {"PK": {"S": "a"}},
        "UpdateExpression": "SET #a = :a REMOVE #b",
        "ExpressionAttributeNames": {"#a": "A", "#b": "B"},
        "ExpressionAttributeValues": {":a": {"BOOL": True}},
    }
    c.update_item(**update)
    c.transact_write_items(TransactItems=[{"Put": PUT}, {"Update": update}])
    first, second = endpoint.seen
    assert first.headers["X-Amz-Target"] == "DynamoDB_20120810.UpdateItem"
    assert first.json == update
    assert second.headers["X-Amz-Target"] == "DynamoDB_20120810.TransactWriteItems"
    assert second.json["TransactItems"] == [{"Put": PUT}, {"Update": update}]
    assert len(second.json["ClientRequestToken"]) == 36  # idempotent retries, as botocore


def test_binary_values_are_base64_on_the_wire(endpoint: Endpoint) -> None:
    packed = b"\x1f\x8b\x00binary"
    client(endpoint.url).put_item(TableName="T", Item={"PK": {"S": "a"}, "Body": {"B": packed}})
    assert endpoint.seen[0].json["Item"]["Body"] == {"B": base64.b64encode(packed).decode()}


def test_requests_are_signed_with_sigv4_and_the_signature_verifies(endpoint: Endpoint) -> None:
    client(endpoint.url, token="session-token").put_item(**PUT)
    (seen,) = endpoint.seen
    auth = seen.headers["Authorization"]
    amz_date = seen.headers["X-Amz-Date"]
    assert seen.headers["X-Amz-Security-Token"] == "session-token"
    assert auth.startswith(
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/{amz_date[:8]}/eu-west-1/dynamodb/aws4_request, "
    )
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-type", "host", "x-amz-date", "x-amz-target"} <= set(signed)
    # Verify as the service would: recompute the signature from what arrived.
    request = AWSRequest(
        method="POST",
        url=endpoint.url + seen.path,
        data=seen.body,
        headers={
            name: seen.headers[next(h for h in seen.headers if h.lower() == name)]
            for name in signed
        },
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        ReadOnlyCredentials(KEY_ID, SECRET, "session-token"), "dynamodb", "eu-west-1"
    )
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    assert auth.endswith(f"Signature={signer.signature(string_to_sign, request)}")


def test_connections_are_pooled_and_kept_alive(endpoint: Endpoint) -> None:
    c = client(endpoint.url)
    for _ in range(5):
        c.put_item(**PUT)
    assert len(endpoint.seen) == 5
    assert len(endpoint.connections) == 1


def test_concurrent_calls_each_get_their_own_answer(endpoint: Endpoint) -> None:
    def echo(seen: Seen) -> Answer:  # the answer names the table asked for
        return Answer(body=orjson.dumps({"Attributes": {"T": {"S": seen.json["TableName"]}}}))

    endpoint.script = [echo] * 200
    c = client(endpoint.url, max_pool=4)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: c.put_item(TableName=f"T{i}", Item={}), range(200)))
    assert [r["Attributes"]["T"]["S"] for r in results] == [f"T{i}" for i in range(200)]
    assert len(endpoint.connections) <= 4


# --- errors as DynamoSink reads them ----------------------------------------------------------


def test_conditional_check_failure_is_a_client_error_with_its_members(endpoint: Endpoint) -> None:
    endpoint.script = [
        error("ConditionalCheckFailedException", "The conditional request failed", Item=PUT["Item"])
    ]
    sleeps: list[float] = []
    with pytest.raises(ClientError) as caught:
        client(endpoint.url, sleeps).put_item(**PUT)
    response = caught.value.response
    assert response["Error"] == {
        "Code": "ConditionalCheckFailedException",
        "Message": "The conditional request failed",
    }
    assert response["Item"] == PUT["Item"]  # ReturnValuesOnConditionCheckFailure=ALL_OLD
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert caught.value.operation_name == "PutItem"
    assert len(endpoint.seen) == 1 and sleeps == []  # never retried


def test_transaction_cancellation_carries_reasons_in_order(endpoint: Endpoint) -> None:
    reasons = [
        {"Code": "None"},
        {"Code": "ConditionalCheckFailed", "Message": "The conditional request failed"},
        {"Code": "None"},
    ]
    endpoint.script = [
        error("TransactionCanceledException", "Transaction cancelled", CancellationReasons=reasons)
    ]
    with pytest.raises(ClientError) as caught:
        client(endpoint.url).transact_write_items(TransactItems=[{"Put": PUT}] * 3)
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert caught.value.response["CancellationReasons"] == reasons
    assert caught.value.operation_name == "TransactWriteItems"
    assert len(endpoint.seen) == 1


def test_validation_errors_are_not_retried(endpoint: Endpoint) -> None:
    endpoint.script = [error("ValidationException", "Item size has exceeded the maximum")]
    with pytest.raises(ClientError) as caught:
        client(endpoint.url).update_item(TableName="T", Key={})
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert len(endpoint.seen) == 1


@pytest.mark.parametrize(
    "code",
    ["ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"],
)
def test_throttling_is_retried_with_full_jitter_backoff(endpoint: Endpoint, code: str) -> None:
    endpoint.script = [error(code), error(code), error(code)]
    sleeps: list[float] = []
    result = client(endpoint.url, sleeps, backoff_base_s=0.1, backoff_cap_s=0.25).put_item(**PUT)
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert result["ResponseMetadata"]["ThrottledAttempts"] == 3  # for the throttle metric
    assert len(endpoint.seen) == 4
    assert [seen.body for seen in endpoint.seen] == [endpoint.seen[0].body] * 4
    # Full jitter: each wait is drawn from [0, min(cap, base * 2^n)].
    assert len(sleeps) == 3
    for n, wait in enumerate(sleeps):
        assert 0 <= wait <= min(0.25, 0.1 * 2**n)


def test_full_jitter_spreads_the_waits(endpoint: Endpoint) -> None:
    endpoint.script = [error("ThrottlingException"), Answer()] * 60
    sleeps: list[float] = []
    c = client(endpoint.url, sleeps, max_attempts=2, backoff_base_s=1.0, backoff_cap_s=1.0)
    for _ in range(60):
        c.put_item(**PUT)
    assert len(sleeps) == 60
    assert min(sleeps) < 0.3 and max(sleeps) > 0.7  # drawn from [0, 1], not fixed


def test_5xx_is_retried_until_max_attempts_then_raised(endpoint: Endpoint) -> None:
    endpoint.default = error("InternalServerError", "Internal server error", status=500)
    sleeps: list[float] = []
    with pytest.raises(ClientError) as caught:
        client(endpoint.url, sleeps, max_attempts=4).put_item(**PUT)
    assert caught.value.response["Error"]["Code"] == "InternalServerError"
    assert len(endpoint.seen) == 4
    assert len(sleeps) == 3


def test_a_non_json_5xx_is_named_by_its_status_and_retried(endpoint: Endpoint) -> None:
    endpoint.script = [Answer(503, b"<html>Service Unavailable</html>")]
    result = client(endpoint.url).put_item(**PUT)
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert len(endpoint.seen) == 2

    endpoint.seen.clear()
    endpoint.default = Answer(503, b"<html>Service Unavailable</html>")
    with pytest.raises(ClientError) as caught:
        client(endpoint.url, max_attempts=2).put_item(**PUT)
    assert caught.value.response["Error"] == {
        "Code": "503",
        "Message": "<html>Service Unavailable</html>",
    }
    assert len(endpoint.seen) == 2


def test_a_dropped_connection_is_retried(endpoint: Endpoint) -> None:
    endpoint.script = [Answer(drop=True)]
    sleeps: list[float] = []
    client(endpoint.url, sleeps).put_item(**PUT)
    assert len(endpoint.seen) == 2 and len(sleeps) == 1

    endpoint.default = Answer(drop=True)
    with pytest.raises(ConnectionClosedError):
        client(endpoint.url, max_attempts=3).put_item(**PUT)


def test_a_corrupted_answer_fails_its_checksum_and_is_retried(endpoint: Endpoint) -> None:
    endpoint.script = [Answer(crc="12345")]
    client(endpoint.url).put_item(**PUT)
    assert len(endpoint.seen) == 2

    endpoint.default = Answer(crc="12345")
    with pytest.raises(ChecksumError):
        client(endpoint.url, max_attempts=2).put_item(**PUT)


def test_the_transaction_token_is_kept_across_retries(endpoint: Endpoint) -> None:
    endpoint.script = [error("ThrottlingException")]
    client(endpoint.url).transact_write_items(TransactItems=[{"Put": PUT}])
    first, second = endpoint.seen
    assert first.json["ClientRequestToken"] == second.json["ClientRequestToken"]


def test_an_unreachable_endpoint_is_a_botocore_error_after_retries() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    with pytest.raises(EndpointConnectionError) as caught:
        client(f"http://127.0.0.1:{port}", sleeps, max_attempts=3).put_item(**PUT)
    assert isinstance(caught.value, BotoCoreError)  # what DynamoSink turns into SinkError
    assert len(sleeps) == 2


# --- DynamoSink on the wire client --------------------------------------------------------


def _writes(*records: Any) -> list[Any]:
    changes = []
    for rec in records:
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        changes.append(to_change(MAPPINGS[event.table], event))
    return plan(changes)


def test_dynamo_sink_reads_the_wire_clients_errors(endpoint: Endpoint) -> None:
    def by_target(seen: Seen) -> Answer:
        item = seen.json.get("Item", {})
        if len(seen.json.get("TransactItems", [])) == 2:
            reasons = [{"Code": "None"}, {"Code": "ConditionalCheckFailed", "Message": "no"}]
            return error("TransactionCanceledException", CancellationReasons=reasons)
        if item.get("LogId") == {"N": "2"}:
            return error("ConditionalCheckFailedException")
        if item.get("LogId") == {"N": "3"}:
            return error("ValidationException", "Item size has exceeded the maximum allowed size")
        return Answer()

    endpoint.default = by_target
    moved = log_row(logid=4, servicename="EmailService")
    writes = _writes(
        create_record(LOGS, log_row(logid=1)),
        create_record(LOGS, log_row(logid=2)),
        create_record(LOGS, log_row(logid=3)),
        update_record(LOGS, log_row(logid=4), moved),  # key move: one transaction
    )
    sink = DynamoSink(client(endpoint.url), concurrency=4)
    try:
        result = sink.write(writes)
    finally:
        sink.close()
    # Log 1 applied; 2 stale; 3 refused. The move's transaction is cancelled by its marker's
    # condition (a newer change at the old key): the put alone is retried and applied.
    assert (result.applied, result.stale) == (2, 2)
    assert [w.item["LogId"] for w, _ in result.failed if w.item] == [{"N": "3"}]
    assert "ValidationException" in result.failed[0][1]


def test_dynamo_sink_counts_consumed_capacity_and_throttles_per_table(endpoint: Endpoint) -> None:
    """Every write asks for ReturnConsumedCapacity=TOTAL; the units DynamoDB reports and the
    attempts it throttled (retried by the client, or cancelled in a transaction) are summed per
    table for the metrics."""
    throttle_once = {"1": True, "tx": True}

    def by_target(seen: Seen) -> Answer:
        assert seen.json["ReturnConsumedCapacity"] == "TOTAL"
        if "TransactItems" in seen.json:
            if throttle_once.pop("tx", False):
                reasons = [{"Code": "ThrottlingError"}, {"Code": "None"}]
                return error("TransactionCanceledException", CancellationReasons=reasons)
            used = [{"TableName": "IntegrationLogs", "CapacityUnits": 4.0}]
            return Answer(body=orjson.dumps({"ConsumedCapacity": used}))
        log_id = seen.json["Item"]["LogId"]["N"]
        if throttle_once.pop(log_id, False):
            return error("ProvisionedThroughputExceededException")
        used = {"TableName": "IntegrationLogs", "CapacityUnits": 2.0 if log_id == "2" else 1.0}
        return Answer(body=orjson.dumps({"ConsumedCapacity": used}))

    endpoint.default = by_target
    moved = log_row(logid=4, servicename="EmailService")
    writes = _writes(
        create_record(LOGS, log_row(logid=1)),
        create_record(LOGS, log_row(logid=2)),
        update_record(LOGS, log_row(logid=4), moved),
    )
    sink = DynamoSink(client(endpoint.url), concurrency=2)
    try:
        result = sink.write(writes)
    finally:
        sink.close()
    part = result.tables["IntegrationLogs"]
    assert part.capacity == 1.0 + 2.0 + 4.0
    assert part.throttled == 2  # log 1's first attempt and the transaction's first try
    assert part.applied == 3


# --- refusals, classified alike on both clients ----------------------------------------------


def writer(kind: str, url: str) -> Any:
    """The sink's writer of that kind, pointed at the fake endpoint."""
    if kind == "wire":
        return client(url)
    return dynamodb_writer(DynamoSettings(endpoint_url=url, client="boto3"))


# As DynamoDB words them (see replicator.stream.sink.classify).
ITEM_REFUSALS = [
    ("ValidationException", "Item size has exceeded the maximum allowed size"),
    (
        "ValidationException",
        "One or more parameter values are not valid. The AttributeValue for a key attribute "
        "cannot contain an empty string value. Key: PK",
    ),
    (
        "ValidationException",
        "Number overflow. Attempting to store a number with magnitude larger than supported range",
    ),
    ("ItemCollectionSizeLimitExceededException", "Collection size exceeded."),
]
SYSTEMIC_REFUSALS = [
    (
        "ValidationException",
        "One or more parameter values were invalid: Missing the key SK in the item",
    ),
    ("ValidationException", "The provided key element does not match the schema"),
    (
        "ValidationException",
        "One or more parameter values were invalid: Type mismatch for key PK expected: N actual: S",
    ),
    ("ResourceNotFoundException", "Requested resource not found"),
    ("AccessDeniedException", "User: arn:aws:iam::1:user/r is not authorized to perform PutItem"),
    ("UnrecognizedClientException", "The security token included in the request is invalid."),
    ("UnknownOperationException", ""),
]


@pytest.mark.parametrize("kind", ["wire", "boto3"])
@pytest.mark.parametrize(("code", "message"), ITEM_REFUSALS)
def test_an_item_level_refusal_parks_that_write_on_both_clients(
    endpoint: Endpoint, kind: str, code: str, message: str
) -> None:
    def by_log(seen: Seen) -> Answer:
        if seen.json["Item"]["LogId"] == {"N": "2"}:
            return error(code, message)
        return Answer()

    endpoint.default = by_log
    batch = _writes(create_record(LOGS, log_row(logid=1)), create_record(LOGS, log_row(logid=2)))
    sink = DynamoSink(writer(kind, endpoint.url), concurrency=2)
    try:
        result = sink.write(batch)
    finally:
        sink.close()
    assert result.applied == 1
    assert [w.item["LogId"] for w, _ in result.failed if w.item] == [{"N": "2"}]
    assert code in result.failed[0][1]
    assert len(endpoint.seen) == 2  # never retried


@pytest.mark.parametrize("kind", ["wire", "boto3"])
@pytest.mark.parametrize(("code", "message"), SYSTEMIC_REFUSALS)
def test_a_systemic_refusal_stops_the_batch_on_both_clients(
    endpoint: Endpoint, kind: str, code: str, message: str
) -> None:
    endpoint.default = error(code, message)
    batch = _writes(create_record(LOGS, log_row(logid=1)), create_record(LOGS, log_row(logid=2)))
    sink = DynamoSink(writer(kind, endpoint.url), concurrency=2)
    try:
        with pytest.raises(SystemicSinkError) as caught:
            sink.write(batch)
    finally:
        sink.close()
    assert code in str(caught.value) and message in str(caught.value)
    assert len(endpoint.seen) == 2  # each lane tried once; nothing parked, nothing retried


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_a_key_move_cancelled_for_a_systemic_reason_stops_the_batch(
    endpoint: Endpoint, kind: str
) -> None:
    reasons = [
        {"Code": "ValidationError", "Message": "Type mismatch for Index Key GSI1PK Expected: S"},
        {"Code": "None"},
    ]
    endpoint.default = error("TransactionCanceledException", CancellationReasons=reasons)
    moved = log_row(logid=4, servicename="EmailService")
    sink = DynamoSink(writer(kind, endpoint.url), concurrency=1)
    try:
        with pytest.raises(SystemicSinkError):
            sink.write(_writes(update_record(LOGS, log_row(logid=4), moved)))
    finally:
        sink.close()
    assert len(endpoint.seen) == 1


# --- the retry policy and timeouts, from the settings -----------------------------------------


def test_timeouts_and_attempts_come_from_the_settings() -> None:
    settings = DynamoSettings(
        max_attempts=3,
        backoff_base_s=0.2,
        backoff_cap_s=2.0,
        request_deadline_s=9.0,
        connect_timeout_s=1.5,
        read_timeout_s=2.5,
    )
    policy = RetryPolicy.from_settings(settings)
    wire = dynamodb_writer(settings)
    assert isinstance(wire, DynamoWireClient)
    assert wire.retry == policy
    assert (wire._pool.timeout.connect_timeout, wire._pool.timeout.read_timeout) == (1.5, 2.5)

    boto = dynamodb_writer(settings.model_copy(update={"client": "boto3"}))
    assert boto.retry == policy  # type: ignore[attr-defined]
    config = boto.meta.config  # type: ignore[attr-defined]
    assert (config.connect_timeout, config.read_timeout) == (1.5, 2.5)
    assert config.retries["total_max_attempts"] == 1  # the policy retries, not botocore too

    other = dynamodb_client(settings)  # tables, verify, cost: botocore's retries, same bounds
    assert other.meta.config.retries["total_max_attempts"] == 3
    assert (other.meta.config.connect_timeout, other.meta.config.read_timeout) == (1.5, 2.5)


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_both_writers_retry_by_the_policy_and_count_throttled_attempts(
    endpoint: Endpoint, kind: str
) -> None:
    endpoint.script = [
        error("ThrottlingException"),
        error("ProvisionedThroughputExceededException"),
    ]
    sleeps: list[float] = []
    retry = RetryPolicy(attempts=5, base_s=0.1, cap_s=0.25, sleep=sleeps.append)
    settings = DynamoSettings(endpoint_url=endpoint.url, client=kind)  # type: ignore[arg-type]
    result = dynamodb_writer(settings, retry=retry).put_item(**PUT)
    assert result["ResponseMetadata"]["ThrottledAttempts"] == 2
    assert len(endpoint.seen) == 3
    assert len(sleeps) == 2 and all(0 <= w <= min(0.25, 0.1 * 2**n) for n, w in enumerate(sleeps))


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_both_writers_keep_the_transaction_token_across_retries(
    endpoint: Endpoint, kind: str
) -> None:
    endpoint.script = [error("ThrottlingException")]
    settings = DynamoSettings(endpoint_url=endpoint.url, client=kind)  # type: ignore[arg-type]
    writer = dynamodb_writer(settings, retry=RetryPolicy(sleep=lambda _s: None))
    writer.transact_write_items(TransactItems=[{"Put": PUT}])
    first, second = endpoint.seen
    assert first.json["ClientRequestToken"] == second.json["ClientRequestToken"]


@pytest.fixture
def silent() -> Iterator[str]:
    """An endpoint that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    done.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_an_endpoint_that_never_answers_is_given_up_at_the_request_deadline(
    silent: str, kind: str
) -> None:
    """Each attempt ends at the read timeout; no retry starts past the deadline, although
    attempts remain (waits are recorded, not slept)."""
    settings = DynamoSettings(
        endpoint_url=silent,
        client=kind,  # type: ignore[arg-type]
        connect_timeout_s=0.5,
        read_timeout_s=0.1,
    )
    sleeps: list[float] = []
    # A deadline of ten read timeouts: a loaded machine still fits two attempts in it.
    retry = RetryPolicy(attempts=100, base_s=0.01, cap_s=0.01, deadline_s=1.0, sleep=sleeps.append)
    writer = dynamodb_writer(settings, retry=retry)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        writer.put_item(**PUT)
    assert 2 <= len(sleeps) + 1 <= 12  # attempts: bounded by the deadline, not by 100
    assert time.monotonic() - started < 1.0 + 0.1 + 1.0


# --- settings ---------------------------------------------------------------------------------


def test_settings_choose_the_writer() -> None:
    assert isinstance(dynamodb_writer(DynamoSettings()), DynamoWireClient)
    boto = dynamodb_writer(DynamoSettings(client="boto3"))
    assert not isinstance(boto, DynamoWireClient)
    assert boto.meta.service_model.service_name == "dynamodb"
    with pytest.raises(ValueError):
        DynamoSettings(client="http")  # type: ignore[arg-type]


def test_without_an_endpoint_url_the_regional_aws_endpoint_is_used() -> None:
    wire = dynamodb_writer(DynamoSettings(endpoint_url=None, region="eu-central-1"))
    assert isinstance(wire, DynamoWireClient)
    assert wire.endpoint_url == "https://dynamodb.eu-central-1.amazonaws.com"


# --- the transact lane: independent rows in one guarded TransactWriteItems --------------------


def inserts(count: int) -> list[Any]:
    changes = []
    for logid in range(1, count + 1):
        rec = create_record(LOGS, log_row(logid=logid))
        event = decode(rec.key, rec.value, rec.origin)
        assert isinstance(event, ChangeEvent)
        changes.append(to_change(MAPPINGS[LOGS], event))
    return plan(changes)


def transact_sink(endpoint: Endpoint, kind: str) -> DynamoSink:
    settings = DynamoSettings(endpoint_url=endpoint.url, client=kind)  # type: ignore[arg-type]
    retry = RetryPolicy(sleep=lambda _s: None)
    return DynamoSink(dynamodb_writer(settings, retry=retry), 1, retry, "transact")


def reason(code: str, message: str = "") -> dict[str, str]:
    return {"Code": code, "Message": message} if code != "None" else {"Code": "None"}


def cancelled_by(*reasons: dict[str, str]) -> Answer:
    return error("TransactionCanceledException", "cancelled", CancellationReasons=list(reasons))


def logids(seen: Seen) -> list[str]:
    return [a["Put"]["Item"]["LogId"]["N"] for a in seen.json["TransactItems"]]


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_rows_go_up_to_100_to_a_transaction_each_guarded(endpoint: Endpoint, kind: str) -> None:
    result = transact_sink(endpoint, kind).write(inserts(150))
    assert sorted(len(s.json["TransactItems"]) for s in endpoint.seen) == [50, 100]
    assert all(
        a["Put"]["ConditionExpression"] == "attribute_not_exists(#pos) OR #pos < :pos"
        for s in endpoint.seen
        for a in s.json["TransactItems"]
    )
    assert result.applied == 150 and result.tables[MAPPINGS[LOGS].name].applied == 150


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_a_cancelled_transaction_drops_stale_rows_parks_refused_ones_and_retries_the_rest(
    endpoint: Endpoint, kind: str
) -> None:
    endpoint.script = [
        cancelled_by(
            reason("None"),
            reason("ConditionalCheckFailed", "The conditional request failed"),
            reason("ValidationError", "Item size has exceeded the maximum allowed size"),
            reason("None"),
        )
    ]
    planned = inserts(4)
    result = transact_sink(endpoint, kind).write(planned)
    first, second = endpoint.seen
    assert logids(first) == ["1", "2", "3", "4"] and logids(second) == ["1", "4"]
    assert first.json["ClientRequestToken"] != second.json["ClientRequestToken"]  # new request
    assert result.applied == 2 and result.stale == 1
    table = result.tables[MAPPINGS[LOGS].name]
    assert table.applied == 2 and table.stale == 1
    ((write, why),) = result.failed
    assert write is planned[2] and "Item size" in why


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_an_ambiguous_failure_is_retried_with_the_same_token_a_conflict_with_a_new_one(
    endpoint: Endpoint, kind: str
) -> None:
    endpoint.script = [
        error("InternalServerError", status=500),  # applied or not? the token makes it once
        cancelled_by(reason("None"), reason("TransactionConflict", "conflict")),
    ]
    result = transact_sink(endpoint, kind).write(inserts(2))
    first, second, third = endpoint.seen
    assert first.json["ClientRequestToken"] == second.json["ClientRequestToken"]
    assert third.json["ClientRequestToken"] != second.json["ClientRequestToken"]
    assert logids(third) == ["1", "2"] and result.applied == 2


@pytest.mark.parametrize("kind", ["wire", "boto3"])
def test_a_transaction_refused_as_a_whole_is_halved_until_the_refused_row_is_alone(
    endpoint: Endpoint, kind: str
) -> None:
    def refuse_with_3(seen: Seen) -> Answer:
        if "3" in logids(seen):
            return error("ValidationException", "Item size has exceeded the maximum allowed size")
        return Answer()

    endpoint.default = refuse_with_3
    planned = inserts(4)
    result = transact_sink(endpoint, kind).write(planned)
    assert [logids(s) for s in endpoint.seen] == [["1", "2", "3", "4"], ["1", "2"], ["3", "4"],
                                                   ["3"], ["4"]]  # fmt: skip
    assert result.applied == 3 and [w for w, _ in result.failed] == [planned[2]]


def test_a_transaction_cancelled_for_a_systemic_reason_stops_the_batch(endpoint: Endpoint) -> None:
    endpoint.script = [
        cancelled_by(reason("None"), reason("ValidationError", "Missing the key SK"))
    ]
    with pytest.raises(SystemicSinkError):
        transact_sink(endpoint, "wire").write(inserts(2))


def test_settings_choose_the_guarded_lane() -> None:
    assert DynamoSettings().guarded_lane == "single"
    assert DynamoSettings(guarded_lane="transact").guarded_lane == "transact"
