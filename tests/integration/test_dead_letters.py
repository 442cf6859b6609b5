"""Events that cannot be decoded or mapped are parked in the dead-letter topic with their
reason and origin, while the good events around them still arrive; `replicator dlq` lists,
shows and replays them. Runs on topics of its own (prefix "dlqtest"), fed record by record."""

from __future__ import annotations

import random
import string
import time
import uuid
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from typer.testing import CliRunner

from replicator.cli import app
from replicator.config import Settings
from replicator.ops.dlq import read_parked
from tests.integration.helpers import get_item, visible, wait_for
from tests.unit.factories import (
    create_record,
    envelope,
    log_row,
    payment_row,
    update_record,
)

pytestmark = pytest.mark.stack


def test_bad_events_are_parked_with_reasons_and_good_ones_arrive(
    consumer_factory: Any,
    settings: Settings,
    pg: psycopg.Connection[Any],
    dynamodb: Any,
    tmp_path: Any,
) -> None:
    prefix = f"dlqtest{uuid.uuid4().hex[:6]}"
    dead_letter_topic = f"{prefix}.dead-letter"

    def isolate(data: dict[str, Any]) -> None:
        data["connector"]["topic_prefix"] = prefix
        data["kafka"]["dead_letter_topic"] = dead_letter_topic

    consumer, own = consumer_factory("_dlq", isolate)
    payments_topic, logs_topic = f"{prefix}.dbo.payments", f"{prefix}.dbo.integrationlogs"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    big = {"max.message.bytes": str(16 * 1024 * 1024)}  # as the connector creates its topics
    for future in admin.create_topics(
        [NewTopic(payments_topic, 1, config=big), NewTopic(logs_topic, 1, config=big)]
    ).values():
        future.result(30)

    customer = 777001
    application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (%s) RETURNING applicationid", [customer]
    ).fetchone()[0]
    loan = pg.execute(
        "INSERT INTO dbo.loans (applicationid) VALUES (%s) RETURNING loanid", [application]
    ).fetchone()[0]
    # A loan no row has (ids come from a sequence; others' tests add loans meanwhile).
    missing_loan = pg.execute("SELECT max(loanid) + 1000000 FROM dbo.loans").fetchone()[0]
    good1 = payment_row(paymentid=900001, loanid=loan, paymentamount="12.34")
    good2 = payment_row(paymentid=900002, loanid=loan, paymentamount="0.10")
    rng = random.Random(5)
    incompressible = "".join(rng.choices(string.ascii_letters + string.punctuation, k=1_500_000))
    bad_payments = [
        ("decode", orjson.dumps({"paymentid": 900003}), b'{"before": null, "after": {"paym'),
        (
            "mapping",
            orjson.dumps({"paymentid": 900004}),
            orjson.dumps(
                envelope(
                    "c",
                    "dbo.payments",
                    None,
                    payment_row(paymentid=900004, loanid=loan, paymentamount=1.5),
                )
            ),
        ),  # a float amount
        ("decode", None, create_record("dbo.payments", payment_row(paymentid=900005)).value),
        (
            "unknown-table",
            orjson.dumps({"paymentid": 900006}),
            orjson.dumps(envelope("c", "dbo.loans", None, payment_row(paymentid=900006))),
        ),
        (
            "lookup-miss",
            orjson.dumps({"paymentid": 900007}),
            # Committed now: it is replayed below, and a replay refuses changes older than
            # the delete markers live.
            create_record(
                "dbo.payments",
                payment_row(paymentid=900007, loanid=missing_loan),
                ts_ms=int(time.time() * 1000),
            ).value,
        ),
    ]
    # Over Kafka's 1 MB default: parking it needs the dead-letter topic to take it too.
    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "message.max.bytes": 17_000_000}
    )
    good_record = create_record("dbo.payments", good1)
    producer.produce(payments_topic, key=good_record.key, value=good_record.value)
    for _, key, value in bad_payments:
        producer.produce(payments_topic, key=key, value=value)
    later = update_record(
        "dbo.payments", good2, good2
    )  # an update of a row seen for the first time
    producer.produce(payments_topic, key=later.key, value=later.value)
    oversize = create_record(
        "dbo.integrationlogs", log_row(logid=900008, requestdata=incompressible)
    )
    producer.produce(logs_topic, key=oversize.key, value=oversize.value)
    good_log = create_record("dbo.integrationlogs", log_row(logid=900009))
    producer.produce(logs_topic, key=good_log.key, value=good_log.value)
    assert producer.flush(30) == 0

    consumer.start()
    payments, logs = own.tables[1].name, own.tables[0].name
    for row in (good1, good2):
        key = {
            "CustomerId": {"N": str(customer)},
            "PaymentDateId": {"S": f"2024-02-01#{row['paymentid']:010d}"},
        }
        item = wait_for(
            lambda k=key: visible(get_item(dynamodb, payments, k)),
            60,
            what=f"payment {row['paymentid']}",
        )
        assert item["PaymentAmount"]["N"] in (row["paymentamount"], "0.1")
    log_key = {
        "PK": {"S": "CreditCheckService-2024-01-15"},
        "SK": {"S": "2024-01-15T10:30:00.123456Z#0000000000000900009"},
    }
    wait_for(lambda: visible(get_item(dynamodb, logs, log_key)), 60, what="good log")

    parked = wait_for(
        lambda: (
            len(p := read_parked(settings.kafka.bootstrap_servers, dead_letter_topic)) >= 6 and p
        ),
        60,
        what="six parked records",
    )
    assert len(parked) == 6
    by_source = {(p.source_topic, p.source_offset): p for p in parked}
    for offset, (reason, key, value) in enumerate(bad_payments, start=1):
        record = by_source[(payments_topic, offset)]
        assert record.reason == reason, record.error
        assert record.key == key and record.value == value  # the original bytes
        assert record.source_partition == 0 and record.time_ms > 0 and record.error
    oversize_parked = by_source[(logs_topic, 0)]
    assert oversize_parked.reason == "mapping" and "400 KB" in oversize_parked.error
    assert oversize_parked.value == oversize.value

    # The consumer committed past every parked record.
    assert consumer.stop() == 0
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import TopicPartition

    probe = KafkaConsumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": own.kafka.group_id}
    )
    committed = probe.committed(
        [TopicPartition(payments_topic, 0), TopicPartition(logs_topic, 0)], timeout=10
    )
    probe.close()
    assert [tp.offset for tp in committed] == [len(bad_payments) + 2, 2]

    # The tooling: list, show, and replay once the cause is fixed (the loan now exists).
    runner = CliRunner()
    config = str(consumer.config)
    listed = runner.invoke(app, ["--config", config, "dlq", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {r["reason"] for r in orjson.loads(listed.stdout)} == {
        "decode",
        "mapping",
        "unknown-table",
        "lookup-miss",
    }
    miss = next(p for p in parked if p.reason == "lookup-miss")
    shown = runner.invoke(app, ["--config", config, "dlq", "show", miss.ref])
    assert shown.exit_code == 0 and f"no row for loanid={missing_loan}" in shown.output
    missing = runner.invoke(app, ["--config", config, "dlq", "show", "0:99999"])
    assert missing.exit_code == 1 and "no dead letter at 0:99999" in missing.output

    late_application = pg.execute(
        "INSERT INTO dbo.applications (customerid) VALUES (777002) RETURNING applicationid"
    ).fetchone()[0]
    pg.execute(
        "INSERT INTO dbo.loans (loanid, applicationid) VALUES (%s, %s)",
        [missing_loan, late_application],
    )
    replayed = runner.invoke(app, ["--config", config, "dlq", "replay", "--reason", "lookup-miss"])
    assert replayed.exit_code == 0, replayed.output
    consumer.start()
    key = {"CustomerId": {"N": "777002"}, "PaymentDateId": {"S": "2024-02-01#0000900007"}}
    wait_for(lambda: visible(get_item(dynamodb, payments, key)), 60, what="replayed payment")
    assert consumer.stop() == 0


def _partition_records(bootstrap_servers: str, topic: str, partitions: int) -> dict[int, list]:
    """Every record of each partition of a topic, up to its end."""
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import TopicPartition

    probe = KafkaConsumer(
        {"bootstrap.servers": bootstrap_servers, "group.id": "dlq-partition-probe", "log_level": 3}
    )
    found: dict[int, list] = {}
    try:
        for partition in range(partitions):
            tp = TopicPartition(topic, partition, 0)
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            found[partition] = []
            if high == low:
                continue
            probe.assign([tp])
            while len(found[partition]) < high - low:
                message = probe.poll(10)
                assert message is not None, f"{topic}[{partition}] did not deliver"
                if message.error() is None:
                    found[partition].append(message)
    finally:
        probe.close()
    return found


def test_replay_goes_back_to_the_original_partition(
    consumer_factory: Any, settings: Settings
) -> None:
    """Connect partitions the source topics with Java's murmur2 hash of the key, librdkafka
    with another hash: a replay names the partition each record came from (dlq.partition), so a
    replayed change stays in its row's partition. One whose partition is gone refuses the whole
    replay, and nothing is produced."""
    prefix = f"dlqpart{uuid.uuid4().hex[:6]}"
    dead_letter_topic = f"{prefix}.dead-letter"

    def isolate(data: dict[str, Any]) -> None:
        data["connector"]["topic_prefix"] = prefix
        data["kafka"]["dead_letter_topic"] = dead_letter_topic

    consumer, _own = consumer_factory("_dlqpart", isolate)
    logs_topic = f"{prefix}.dbo.integrationlogs"
    bootstrap = settings.kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(logs_topic, 3), NewTopic(dead_letter_topic, 1)]
    ).values():
        future.result(30)

    # One key parked from each of the three partitions: whatever partition librdkafka's hash
    # would give the key, two of them differ from it. And one from a partition that is gone.
    row = log_row(logid=910001)
    parked = create_record("dbo.integrationlogs", row, ts_ms=int(time.time() * 1000))
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition in (0, 1, 2, 7):
        producer.produce(
            dead_letter_topic,
            key=parked.key,
            value=parked.value,
            headers=[
                ("dlq.reason", b"lookup-miss"),
                ("dlq.error", b"test"),
                ("dlq.topic", logs_topic.encode()),
                ("dlq.partition", str(partition).encode()),
                ("dlq.offset", b"0"),
                ("dlq.time_ms", str(int(time.time() * 1000)).encode()),
            ],
        )
    assert producer.flush(30) == 0

    runner = CliRunner()
    config = str(consumer.config)
    refused = runner.invoke(app, ["--config", config, "dlq", "replay", "--all"])
    assert refused.exit_code == 1, refused.output
    assert "has no partition 7" in refused.output and "nothing was replayed" in refused.output
    assert all(not r for r in _partition_records(bootstrap, logs_topic, 3).values())

    replayed = runner.invoke(app, ["--config", config, "dlq", "replay", "0:0", "0:1", "0:2"])
    assert replayed.exit_code == 0, replayed.output
    landed = _partition_records(bootstrap, logs_topic, 3)
    for partition, ref in ((0, "0:0"), (1, "0:1"), (2, "0:2")):
        (message,) = landed[partition]
        assert message.key() == parked.key and message.value() == parked.value
        assert dict(message.headers())["dlq.replayed_from"] == ref.encode()


def test_replay_skips_a_record_whose_row_changed_since(
    consumer_factory: Any, settings: Settings
) -> None:
    """A parked change whose row has a newer record later in its partition is not replayed:
    the newer change holds the row's whole state, and the replayed older record, appended
    after it, is what compaction would keep for the key (a later replay of the topic would
    rebuild the older version). A parked change of a row with nothing newer goes back."""
    prefix = f"dlqnewer{uuid.uuid4().hex[:6]}"
    dead_letter_topic = f"{prefix}.dead-letter"

    def isolate(data: dict[str, Any]) -> None:
        data["connector"]["topic_prefix"] = prefix
        data["kafka"]["dead_letter_topic"] = dead_letter_topic

    consumer, _own = consumer_factory("_dlqnewer", isolate)
    logs_topic = f"{prefix}.dbo.integrationlogs"
    bootstrap = settings.kafka.bootstrap_servers
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(logs_topic, 1), NewTopic(dead_letter_topic, 1)]
    ).values():
        future.result(30)

    now_ms = int(time.time() * 1000)
    changed, unchanged = log_row(logid=920001), log_row(logid=920002)
    first = create_record("dbo.integrationlogs", changed, ts_ms=now_ms, lsn=1000)
    newer = update_record(
        "dbo.integrationlogs", changed, {**changed, "statuscode": "201"}, ts_ms=now_ms, lsn=2000
    )
    other = create_record("dbo.integrationlogs", unchanged, ts_ms=now_ms, lsn=3000)
    producer = Producer({"bootstrap.servers": bootstrap})
    for record in (first, newer, other):  # offsets 0, 1, 2 of partition 0
        producer.produce(logs_topic, partition=0, key=record.key, value=record.value)
    for offset, record in ((0, first), (2, other)):  # both parked from partition 0
        producer.produce(
            dead_letter_topic,
            key=record.key,
            value=record.value,
            headers=[
                ("dlq.reason", b"lookup-miss"),
                ("dlq.error", b"test"),
                ("dlq.topic", logs_topic.encode()),
                ("dlq.partition", b"0"),
                ("dlq.offset", str(offset).encode()),
                ("dlq.time_ms", str(now_ms).encode()),
            ],
        )
    assert producer.flush(30) == 0

    done = CliRunner().invoke(app, ["--config", str(consumer.config), "dlq", "replay", "--all"])
    assert done.exit_code == 0, done.output
    assert "replayed 1 record(s)" in done.output
    assert "skipped 1 record(s) whose row has a newer change" in done.output
    assert "0:0" in done.output.split("skipped", 1)[1]  # the superseded one is named
    (landed,) = [_partition_records(bootstrap, logs_topic, 1)[0][3:]]
    assert [(m.key(), m.value()) for m in landed] == [(other.key, other.value)]
