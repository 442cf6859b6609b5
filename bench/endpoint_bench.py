"""The local DynamoDB endpoint against the one it replaced, measured in the same run.

    ./dev setup && .venv/bin/pip install -e '.[bench]'     # moto, for the comparison
    .venv/bin/python bench/endpoint_bench.py                # dynoxide 1k/10k/100k/1M, moto 1k-50k
    .venv/bin/python bench/endpoint_bench.py --sizes 1000,10000 --moto-max 10000

Each endpoint runs as a server of this benchmark's own (its own port, its own state), so the
shared stack is neither loaded nor read. At each table size (items loaded by BatchWriteItem into
a table shaped like IntegrationLogs: a string key pair and one GSI) it times, with boto3, medians
of: a conditional PutItem (the sink's guard), a TransactWriteItems of two puts (a key move), and
a GSI Query of 20 items (the read path). Then, once per endpoint: whether connections are kept
alive, whether DynamoDB's limits are enforced (26-item batch, 400 KB item, 39-digit number, one
item twice in a transaction), and whether the state survives a restart of the server.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from replicator.core.items import DELETED, GUARD, POS
from replicator.stream.dynamo_wire import DynamoWireClient

sys.path.insert(0, str(Path(__file__).parent))
from own_endpoint import dynoxide_command, serve

ROOT = Path(__file__).resolve().parents[1]
TABLE = "BenchLogs"


# --- the endpoints ---------------------------------------------------------------------------


def moto_command(port: int, _state: Path) -> list[str]:
    server = ROOT / ".venv" / "bin" / "moto_server"
    if not server.exists():
        raise SystemExit("moto is not installed: .venv/bin/pip install -e '.[bench]'")
    return [str(server), "-H", "127.0.0.1", "-p", str(port)]


def client(port: int) -> Any:
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, max_pool_connections=16),
    )


# --- measurements ----------------------------------------------------------------------------


def create_table(db: Any) -> None:
    with contextlib.suppress(ClientError):
        db.delete_table(TableName=TABLE)
    db.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": n, "AttributeType": "S"} for n in ("PK", "SK", "GSI1PK")
        ],
        KeySchema=[
            {"AttributeName": "PK", "KeyType": "HASH"},
            {"AttributeName": "SK", "KeyType": "RANGE"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "GSI1",
                "KeySchema": [
                    {"AttributeName": "GSI1PK", "KeyType": "HASH"},
                    {"AttributeName": "SK", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    deadline = time.monotonic() + 30
    while db.describe_table(TableName=TABLE)["Table"]["TableStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise SystemExit("table not ACTIVE after 30 s")
        time.sleep(0.1)


def item(i: int) -> dict[str, Any]:
    # 1,000 items per partition key and 200 per GSI key: a query touches few of the table's.
    return {
        "PK": {"S": f"Service{i % 50}-{i // 1000:06d}"},
        "SK": {"S": f"2024-01-15T10:30:00.000000Z#{i:019d}"},
        "GSI1PK": {"S": f"APP#{i // 200}"},
        POS: {"S": f"{i:016x}.1.{i:016x}"},
        "RequestData": {"S": '{"amount": "12.50", "currency": "EUR"}' * 4},
        "Amount": {"N": "12.50"},
    }


def load(db: Any, start: int, stop: int) -> float:
    """Items [start, stop) by BatchWriteItem, 8 requests in flight; returns items/s."""

    def batch(first: int) -> None:
        requests = [{"PutRequest": {"Item": item(i)}} for i in range(first, min(first + 25, stop))]
        while requests:
            answer = db.batch_write_item(RequestItems={TABLE: requests})
            requests = answer.get("UnprocessedItems", {}).get(TABLE, [])

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, range(start, stop, 25)))
    return (stop - start) / max(time.perf_counter() - started, 1e-9)


def median_ms(call: Callable[[int], Any], runs: int) -> float:
    times = []
    for n in range(runs):
        started = time.perf_counter()
        call(n)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def at_size(db: Any, size: int, runs: int) -> dict[str, float]:
    def put(n: int) -> None:
        new = item(n * 7919 % size)
        new[POS] = {"S": f"{time.time_ns():016x}.1.0"}  # newer than any earlier put
        db.put_item(
            TableName=TABLE,
            Item=new,
            ConditionExpression=GUARD,
            ExpressionAttributeNames={"#pos": POS},
            ExpressionAttributeValues={":pos": new[POS]},
        )

    def move(n: int) -> None:
        old, new = item(n * 104_729 % size), item(size + 10_000_000 + n)
        marker = {"PK": old["PK"], "SK": old["SK"], DELETED: {"BOOL": True}, POS: new[POS]}
        db.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": TABLE, "Item": new}},
                {"Put": {"TableName": TABLE, "Item": marker}},
            ]
        )

    def query(n: int) -> None:
        db.query(
            TableName=TABLE,
            IndexName="GSI1",
            KeyConditionExpression="GSI1PK = :k",
            ExpressionAttributeValues={":k": {"S": f"APP#{n * 31 % (size // 200 or 1)}"}},
            Limit=20,
            ScanIndexForward=False,
        )

    return {
        "put_ms": median_ms(put, runs),
        "move_ms": median_ms(move, runs),
        "query_ms": median_ms(query, runs),
    }


def keeps_alive(port: int) -> bool:
    """Twenty signed DynamoDB requests over a pool of one: one connection if the server keeps
    it open (the sink's wire client reuses connections; a server that closes them costs a TCP
    handshake per write)."""
    wire = DynamoWireClient(
        f"http://127.0.0.1:{port}", "us-east-1", Credentials("bench", "bench"), max_pool=1
    )
    for _ in range(20):
        wire._call("ListTables", {})  # any call: the connection is what is measured
    return wire._pool.num_connections == 1


def refuses(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "ValidationException"
    return False


def limits(db: Any) -> dict[str, bool]:
    base = item(10**9)
    big = {**base, "RequestData": {"S": "x" * 409_600}}  # 400 KB counts names and values
    digits = {**base, "Amount": {"N": "1" * 39}}
    return {
        "26-item batch refused": refuses(
            lambda: db.batch_write_item(
                RequestItems={TABLE: [{"PutRequest": {"Item": item(10**9 + i)}} for i in range(26)]}
            )
        ),
        "400 KB item refused": refuses(lambda: db.put_item(TableName=TABLE, Item=big)),
        "39-digit number refused": refuses(lambda: db.put_item(TableName=TABLE, Item=digits)),
        "item twice in a transaction refused": refuses(
            lambda: db.transact_write_items(
                TransactItems=[{"Put": {"TableName": TABLE, "Item": base}}] * 2
            )
        ),
    }


def survives_restart(command: Callable[[int, Path], list[str]], port: int, state: Path) -> bool:
    with serve(command(port, state), port):
        db = client(port)
        create_table(db)
        db.put_item(TableName=TABLE, Item=item(1))
    with serve(command(port, state), port):
        try:
            key = {k: item(1)[k] for k in ("PK", "SK")}
            found = client(port).get_item(TableName=TABLE, Key=key)
        except ClientError:
            return False  # the table is gone
        return "Item" in found


def bench(
    name: str, command: Callable[[int, Path], list[str]], port: int, sizes: list[int], runs: int
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"endpoint-{name}-"))
    result: dict[str, Any] = {"sizes": {}}
    with serve(command(port, folder / "state.db"), port):
        db = client(port)
        create_table(db)
        loaded = 0
        for size in sizes:
            rate = load(db, loaded, size)
            loaded = size
            result["sizes"][size] = {"load_items_s": rate, **at_size(db, size, runs)}
            row = result["sizes"][size]
            print(
                f"  {name:8} {size:>9,} items: load {rate:8,.0f} items/s  put {row['put_ms']:7.2f}"
                f" ms  key move {row['move_ms']:8.2f} ms  GSI query {row['query_ms']:7.2f} ms",
                flush=True,
            )
        result["keep_alive"] = keeps_alive(port)
        result["limits"] = limits(db)
    result["durable"] = survives_restart(command, port + 1, folder / "restart.db")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--moto-max", type=int, default=50_000, help="moto copies whole tables")
    parser.add_argument("--runs", type=int, default=50, help="timed calls per figure")
    parser.add_argument("--port", type=int, default=21710, help="two ports from here per endpoint")
    parser.add_argument("--no-moto", action="store_true")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    results = {"dynoxide": bench("dynoxide", dynoxide_command, args.port, sizes, args.runs)}
    if not args.no_moto:
        small = [s for s in sizes if s <= args.moto_max]
        results["moto"] = bench("moto", moto_command, args.port + 2, small, args.runs)

    print("\n| endpoint | items | load items/s | conditional put | key move (2 puts) | GSI query |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, result in results.items():
        for size, row in result["sizes"].items():
            print(
                f"| {name} | {size:,} | {row['load_items_s']:,.0f} | {row['put_ms']:.2f} ms "
                f"| {row['move_ms']:.2f} ms | {row['query_ms']:.2f} ms |"
            )
    checks = list(results["dynoxide"]["limits"])
    print(
        "\n| endpoint | keeps connections alive | " + " | ".join(checks) + " | survives a restart |"
    )
    print("| --- | --- |" + " --- |" * (len(checks) + 1))
    for name, result in results.items():
        checks = " | ".join("yes" if v else "no" for v in result["limits"].values())
        alive, durable = (("yes" if result[k] else "no") for k in ("keep_alive", "durable"))
        print(f"| {name} | {alive} | {checks} | {durable} |")
    dyn = results["dynoxide"]["sizes"]
    first, last = dyn[sizes[0]], dyn[sizes[-1]]
    print(
        f"\ndynoxide, {sizes[-1]:,} items against {sizes[0]:,}: key move "
        f"{last['move_ms'] / first['move_ms']:.2f}x, GSI query "
        f"{last['query_ms'] / first['query_ms']:.2f}x, conditional put "
        f"{last['put_ms'] / first['put_ms']:.2f}x"
    )
    if "moto" in results:
        for size, row in results["moto"]["sizes"].items():
            mine = dyn[size]
            print(
                f"at {size:,} items moto / dynoxide: key move "
                f"{row['move_ms'] / mine['move_ms']:.0f}x, GSI query "
                f"{row['query_ms'] / mine['query_ms']:.0f}x, "
                f"put {row['put_ms'] / mine['put_ms']:.1f}x"
            )


if __name__ == "__main__":
    sys.exit(main())
