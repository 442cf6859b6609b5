"""Realistic data for the read path's tests, written to PostgreSQL and replicated by a consumer of
our own into our own DynamoDB tables: logs of several services over several days (failures,
NULL application and correlation ids, equal timestamps, one item gzipped to fit 400 KB),
payments of several customers and loans (many per customer and per date, amounts with trailing
zeros), then updates, key moves and deletes (delete markers in DynamoDB).

Every value that partitions a pattern is this run's own (service names, ids, a far-off year),
so other tests' rows never land in our results, and our consumer starts at the topics' ends
instead of replaying their whole history.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from replicator.config import Settings
from replicator.reads.dynamo import DynamoReads
from replicator.reads.patterns import StoreError
from replicator.reads.postgres import PostgresReads
from tests.integration.helpers import wait_for

SUFFIX = f"_reads{uuid.uuid4().hex[:6]}"


@dataclass
class ReadsWorld:
    settings: Settings  # our own tables (suffixed) and consumer group
    consumer: Any
    tag: str
    services: list[str]
    apps: list[int]
    correlations: list[str]
    log_days: list[dt.date]
    log_ids: list[int] = field(default_factory=list)
    deleted_log_ids: list[int] = field(default_factory=list)
    big_log_id: int = 0
    customers: list[int] = field(default_factory=list)
    loans: dict[int, list[int]] = field(default_factory=dict)
    pay_start: dt.date = dt.date(2100, 1, 1)
    pay_end: dt.date = dt.date(2100, 1, 1)
    payment_ids: list[int] = field(default_factory=list)
    deleted_payment_ids: list[int] = field(default_factory=list)
    moved_payment_ids: list[int] = field(default_factory=list)
    suffix: str = SUFFIX  # of our tables' names

    @property
    def logs_table(self) -> str:
        return f"IntegrationLogs{self.suffix}"

    @property
    def payments_table(self) -> str:
        return f"Payments{self.suffix}"


def _fast_phases(data: dict[str, Any]) -> None:
    data.setdefault("reads", {})
    data["reads"]["cache_s"] = 1.0
    data["reads"]["shadow_recheck_s"] = 0.5
    data["reads"]["incident_flush_s"] = 1.0
    # The shared endpoint can be slow under other tests' load: not what these tests are about.
    data["reads"]["dynamodb_timeout_s"] = 30.0
    data["reads"]["dynamodb_attempts"] = 3


def write_logs(conn: psycopg.Connection[Any], rng: random.Random, world: ReadsWorld) -> None:
    sql = (
        "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
        "responsedata, statuscode, issuccess, errormessage, processingtimems, logtimestamp, "
        "correlationid, userid) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING logid"
    )
    kinds = ["Credit Check", "Payment Processing", "External API", "Email Notification"]
    rows = []
    tie: dt.datetime | None = None
    for s, service in enumerate(world.services):
        for day in world.log_days:
            for _ in range(rng.randint(8, 14)):
                when = dt.datetime(day.year, day.month, day.day) + dt.timedelta(
                    microseconds=rng.randint(0, 86_399_999_999)
                )
                if tie is not None and rng.random() < 0.08:
                    when = tie  # equal timestamps: LogId breaks the tie
                tie = when
                if rng.random() < 0.03:  # midnight exactly: range ends exclude it
                    when = dt.datetime(day.year, day.month, day.day)
                ok = rng.random() > 0.25
                app = rng.choice([world.apps[0], world.apps[0], *world.apps, None])
                corr = rng.choice([None, None, *world.correlations])
                rows.append(
                    [
                        app,
                        kinds[s % len(kinds)],
                        service,
                        json.dumps({"n": rng.randint(1, 10**6), "who": "Zoë Ångström 🚀"}),
                        '{"ok": true}' if ok else None,
                        "200" if ok else rng.choice(["500", "503", None]),
                        ok,
                        None if ok else "upstream unavailable: ünïcode",
                        rng.choice([None, rng.randint(5, 4000)]),
                        when,
                        corr,
                        rng.choice([None, f"user{rng.randint(1, 9)}"]),
                    ]
                )
    with conn.transaction(), conn.cursor() as cur:
        for row in rows:
            world.log_ids.append(cur.execute(sql, row).fetchone()[0])
        # Two ~220 KB JSON bodies: the item is over 400 KB, so the sink gzips them into binary
        # attributes, and reads unpack them. (The change event stays under Kafka's 1 MB.)
        day = world.log_days[2]
        big = json.dumps({"blob": "Zoë 東京 " * 10_000, "end": True})
        world.big_log_id = cur.execute(
            sql,
            [world.apps[1], "Document Upload", world.services[0], big, big, "200", True, None,
             12, dt.datetime(day.year, day.month, day.day, 12), world.correlations[0], None],
        ).fetchone()[0]  # fmt: skip
        world.log_ids.append(world.big_log_id)


def change_logs(conn: psycopg.Connection[Any], rng: random.Random, world: ReadsWorld) -> None:
    ids = [i for i in world.log_ids if i != world.big_log_id]
    rng.shuffle(ids)
    flips, moves, deletes = ids[:15], ids[15:25], ids[25:40]
    with conn.transaction():
        for logid in flips:  # in and out of the failures index
            conn.execute(
                "UPDATE dbo.integrationlogs SET issuccess = NOT issuccess WHERE logid = %s",
                [logid],
            )
        for logid in moves:  # a key move: to another day's partition
            conn.execute(
                "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval "
                "'1 day 7 microseconds' WHERE logid = %s AND logtimestamp < %s",
                [logid, dt.datetime.combine(world.log_days[-1], dt.time())],
            )
        for logid in deletes:
            conn.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
            world.deleted_log_ids.append(logid)
    world.log_ids = [i for i in world.log_ids if i not in world.deleted_log_ids]


def write_payments(conn: psycopg.Connection[Any], rng: random.Random, world: ReadsWorld) -> None:
    amounts = [Decimal("100.00"), Decimal("12.50"), Decimal("0.01"), Decimal("99999999.99"),
               Decimal("1234.05"), Decimal("0.00")]  # fmt: skip
    with conn.transaction(), conn.cursor() as cur:
        for count, customer in zip((3, 1, 1), world.customers, strict=True):
            for _ in range(count):
                app = cur.execute(
                    "INSERT INTO dbo.applications (customerid, requestedamount) "
                    "VALUES (%s, 25000.00) RETURNING applicationid",
                    [customer],
                ).fetchone()[0]
                loan = cur.execute(
                    "INSERT INTO dbo.loans (applicationid, principal, interestrate) "
                    "VALUES (%s, 25000.00, 0.0725) RETURNING loanid",
                    [app],
                ).fetchone()[0]
                world.loans.setdefault(customer, []).append(loan)
        days = (world.pay_end - world.pay_start).days
        for customer, how_many in zip(world.customers, (150, 40, 6), strict=True):
            for number in range(how_many):
                amount = rng.choice([*amounts, Decimal(rng.randint(1, 900_000)) / 100])
                interest = (amount * Decimal("0.07")).quantize(Decimal("0.01"))
                world.payment_ids.append(
                    cur.execute(
                        "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, "
                        "paymentamount, principalamount, interestamount, paymentmethod, "
                        "paymentstatus, transactionid) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                        "RETURNING paymentid",
                        [
                            rng.choice(world.loans[customer]),
                            number + 1,
                            world.pay_start + dt.timedelta(days=rng.randint(0, days)),
                            amount,
                            amount - interest,
                            interest,
                            rng.choice(["ACH", "Check", "Online", "Cash"]),
                            rng.choice(["Pending", "Completed", "Completed", "Failed", "Reversed"]),
                            rng.choice([None, f"tx-{world.tag}-{number}"]),
                        ],
                    ).fetchone()[0]
                )


def change_payments(conn: psycopg.Connection[Any], rng: random.Random, world: ReadsWorld) -> None:
    ids = list(world.payment_ids)
    rng.shuffle(ids)
    with conn.transaction():
        for pid in ids[:20]:
            conn.execute(
                "UPDATE dbo.payments SET paymentstatus = 'Reversed' WHERE paymentid = %s", [pid]
            )
        for pid in ids[20:30]:  # key move: the date is in the sort key
            conn.execute(
                "UPDATE dbo.payments SET paymentdate = paymentdate - 3 WHERE paymentid = %s "
                "AND paymentdate - 3 >= %s",
                [pid, world.pay_start],
            )
            world.moved_payment_ids.append(pid)
        for pid in ids[30:42]:
            conn.execute("DELETE FROM dbo.payments WHERE paymentid = %s", [pid])
            world.deleted_payment_ids.append(pid)
    world.payment_ids = [i for i in world.payment_ids if i not in world.deleted_payment_ids]


def start_at_the_end(own: Settings) -> None:
    """Commit our new group's offsets at the topics' current ends: our consumer replicates only
    what is written from now on. (On a shared stack the history can be tens of thousands of
    events; every value our patterns partition on is this run's own, so nothing older can be in
    our results.) A topic that does not exist yet is read from its start when it appears."""
    probe = Consumer(
        {
            "bootstrap.servers": own.kafka.bootstrap_servers,
            "group.id": own.kafka.group_id,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        ends = []
        for mapping in own.tables:
            topic = own.topic_of(mapping)
            found = probe.list_topics(topic, timeout=10).topics[topic]
            if found.error is not None:
                continue
            for partition in found.partitions:
                _, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                ends.append(TopicPartition(topic, partition, high))
        if ends:
            probe.commit(offsets=ends, asynchronous=False)
    finally:
        probe.close()


def build_world(
    consumer_factory: Any,
    pg: psycopg.Connection[Any],
    suffix: str = SUFFIX,
    change: Callable[[dict[str, Any]], None] | None = None,
) -> ReadsWorld:
    """``change`` bends the consumer's settings further (a mapping's shards, say)."""

    def configure(data: dict[str, Any]) -> None:
        _fast_phases(data)
        if change is not None:
            change(data)

    consumer, own = consumer_factory(suffix, change=configure)
    start_at_the_end(own)
    consumer.start()
    seed = uuid.uuid4().int
    rng = random.Random(seed)
    tag = uuid.UUID(int=seed).hex[:8]
    # A far-off year of our own: failures of a day and status/method ranges are shared keys.
    year = rng.randint(2100, 9000)
    first_day = dt.date(year, rng.randint(1, 12), 1)
    world = ReadsWorld(
        settings=own,
        consumer=consumer,
        tag=tag,
        services=[f"ReadsSvc{tag}{c}" for c in "ABCD"],
        apps=[rng.randint(1_000_000_000, 2_000_000_000) for _ in range(5)],
        correlations=[f"corr-{tag}-{n}" for n in range(20)],
        log_days=[first_day + dt.timedelta(days=d) for d in range(8)],
        customers=[rng.randint(1_000_000_000, 2_000_000_000) for _ in range(3)],
        pay_start=dt.date(year + 1, 3, 1),
        pay_end=dt.date(year + 1, 4, 29),
        suffix=suffix,
    )
    write_logs(pg, rng, world)
    write_payments(pg, rng, world)
    change_logs(pg, rng, world)
    change_payments(pg, rng, world)
    postgres, dynamo = PostgresReads(own), DynamoReads(own)
    try:
        wait_for(lambda: replicated(world, postgres, dynamo), 300, 1.0, "our rows replicated")
    finally:
        postgres.close()
    return world


def everything(reader: Any, w: ReadsWorld) -> list[Any]:
    """Every row of ours, through one store: all our services' days, all our customers."""
    rows: list[Any] = []
    end = (w.log_days[-1] + dt.timedelta(days=2)).isoformat()
    for service in w.services:
        after = None
        while True:
            page = reader.logs_by_service(service, w.log_days[0].isoformat(), end, limit=500,
                                          after=after)  # fmt: skip
            rows += page.rows
            if not (after := page.next):
                break
    for customer in w.customers:
        rows += reader.payments_by_customer(customer, limit=500).rows
    return rows


def replicated(w: ReadsWorld, postgres: PostgresReads, dynamo: DynamoReads) -> bool:
    try:
        return everything(postgres, w) == everything(dynamo, w)
    except StoreError:  # a slow moment of the shared endpoint: look again
        return False


_BUILT: dict[str, ReadsWorld] = {}


@pytest.fixture(scope="session")
def reads_world(consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any) -> Any:
    """Built once per session. (Test modules import this fixture, and each import is a fixture
    of its own to pytest: the first builds, the others reuse.)"""
    if "world" in _BUILT:
        yield _BUILT["world"]
        return
    world = _BUILT["world"] = build_world(consumer_factory, pg)
    yield world
    if world.consumer.alive():
        assert world.consumer.stop() == 0, f"consumer exited badly; see {world.consumer.log}"
    for table in (world.logs_table, world.payments_table):  # keep the shared endpoint lean
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=table)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_dead_dynamodb(settings: Settings) -> Settings:
    """The same settings with a DynamoDB endpoint nothing listens on (the shared one stays up)."""
    dead = settings.dynamodb.model_copy(
        update={"endpoint_url": f"http://127.0.0.1:{closed_port()}"}
    )
    return settings.model_copy(update={"dynamodb": dead})
