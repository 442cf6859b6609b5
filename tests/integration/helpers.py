"""Reading both stores in the shape the comparison needs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from replicator.core.items import DELETED, META_ATTRIBUTES
from replicator.core.mapping import Item, TableMapping, to_item
from replicator.stream.rows import as_debezium


def source_rows(conn: psycopg.Connection[Any], mapping: TableMapping) -> list[dict[str, Any]]:
    """Every row of the mapped table, enriched as the pipeline enriches it."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = [
            {k: as_debezium(v) for k, v in r.items()}
            for r in cur.execute(f"SELECT * FROM {mapping.source}")
        ]
        for lookup in mapping.lookups:
            keys = list({r[lookup.using] for r in rows})
            found = dict(tuple(r.values()) for r in cur.execute(lookup.sql, {"keys": keys}))
            for row in rows:
                row[lookup.column] = found.get(row[lookup.using])
    return rows


def expected_items(conn: psycopg.Connection[Any], mapping: TableMapping) -> dict[str, Any]:
    items = {}
    for row in source_rows(conn, mapping):
        item, _ = to_item(mapping, row)
        items[key_text(mapping, item)] = normalized(item)
    return items


def replica_items(client: Any, mapping: TableMapping) -> tuple[dict[str, Any], int]:
    """Live items (meta attributes dropped) and the number of delete markers."""
    items: dict[str, Any] = {}
    markers = 0
    for page in client.get_paginator("scan").paginate(TableName=mapping.name, ConsistentRead=True):
        for item in page["Items"]:
            if item.get(DELETED, {}).get("BOOL"):
                markers += 1
                continue
            clean = {k: v for k, v in item.items() if k not in META_ATTRIBUTES}
            items[key_text(mapping, clean)] = normalized(clean)
    return items, markers


def key_text(mapping: TableMapping, item: Item) -> str:
    return "|".join(next(iter(item[a].values())) for a in mapping.key_attributes)


def get_item(client: Any, table: str, key: Item) -> Item | None:
    return client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")


def visible(item: Item | None) -> Item | None:
    """The item as a reader sees it: None for a delete marker, meta attributes dropped."""
    if item is None or item.get(DELETED, {}).get("BOOL"):
        return None
    return {k: v for k, v in item.items() if k not in META_ATTRIBUTES}


def normalized(item: Item | None) -> dict[str, Any] | None:
    """Numbers as Decimal, so '0.10' and '0.1' (DynamoDB's canonical form) compare equal."""
    if item is None:
        return None
    return {
        k: ("N", Decimal(v["N"])) if "N" in v else next(iter(v.items())) for k, v in item.items()
    }


def wait_for(
    check: Callable[[], Any],
    timeout_s: float = 60,
    interval_s: float = 0.1,
    what: str = "condition",
) -> Any:
    """Poll until check() returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s}s; last value: {last!r}")


def caught_up(bootstrap_servers: str, group: str, topics: list[str]) -> bool:
    """Whether the group has committed every partition of the topics up to its end."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group, "log_level": 3})
    try:
        partitions = [
            TopicPartition(t, p)
            for t in topics
            for p in probe.list_topics(t, timeout=10).topics[t].partitions
        ]
        committed = probe.committed(partitions, timeout=10)
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            if high > low and tp.offset < high:  # an empty partition has nothing to commit
                return False
        return True
    finally:
        probe.close()


def live_count(client: Any, table: str) -> int:
    """Items that are not delete markers."""
    total = 0
    for page in client.get_paginator("scan").paginate(
        TableName=table,
        Select="COUNT",
        FilterExpression="attribute_not_exists(#d)",
        ExpressionAttributeNames={"#d": DELETED},
    ):
        total += page["Count"]
    return total


def from_now(data: dict[str, Any]) -> None:
    """consumer_factory change: the new group starts at the topics' ends, not their history
    (long on a shared stack); the test brings older rows over itself (verify --repair)."""
    data["kafka"]["new_group_starts_at"] = "latest"


def consuming(pg: psycopg.Connection[Any], own: Any, timeout_s: float = 180) -> None:
    """Until a consumer started `from_now` has committed a position on every partition of its
    topics: before that, lag (and verify's re-check, which waits for it) counts a partition's
    whole history as not applied. Probe rows go to both tables until every partition has seen
    one and the consumer committed it."""
    from confluent_kafka import Consumer, TopicPartition

    topics = [own.topic_of(m) for m in own.tables]
    probe = Consumer(
        {"bootstrap.servers": own.kafka.bootstrap_servers, "group.id": own.kafka.group_id}
    )
    try:

        def committed_everywhere() -> bool:
            pg.execute(
                "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess) "
                "VALUES ('External API', 'ConsumerProbe', true)"
            )
            pg.execute(
                "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
                "principalamount, interestamount, paymentmethod, transactionid) SELECT "
                "max(loanid), 1, current_date, 1.00, 1.00, 0.00, 'ACH', 'consumer-probe' "
                "FROM dbo.loans HAVING max(loanid) IS NOT NULL"
            )
            time.sleep(1)
            # Listed each time: on a new stack a topic appears only with its table's first
            # change (the probes above); no partitions at all would make all() true at once.
            found = {t: probe.list_topics(t, timeout=10).topics[t].partitions for t in topics}
            if not all(found.values()):
                return False
            partitions = [TopicPartition(t, p) for t, ps in found.items() for p in ps]
            return all(tp.offset >= 0 for tp in probe.committed(partitions, timeout=10))

        wait_for(committed_everywhere, timeout_s, interval_s=0, what="offsets on every partition")
    finally:
        probe.close()


ROOT = Path(__file__).resolve().parents[2]


def cli(
    config: Any, *args: str, timeout: float = 180, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    """`replicator --config CONFIG ARGS...` as a child process, output captured as text;
    ``columns`` sets the width rich draws tables at."""
    env = {**os.environ, "COLUMNS": str(columns)} if columns else None
    return subprocess.run(
        [sys.executable, "-m", "replicator.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )
