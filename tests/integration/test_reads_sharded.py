"""Hot partitions on the real stack: IntegrationLogs with shards: 4 (the table key and the
application and failure indexes carry logid mod 4; the correlation index does not), replicated
by the real pipeline. Every read pattern answers identically from PostgreSQL and DynamoDB, page
by page with small pages, and as an independent oracle says; items sit in all four shards;
verify over the sharded table is clean, finds planted divergences at their sharded keys and
repairs them; `tables create` refuses a table keyed for another shard count; re-sharding (4 to
2) is a backfill into a new table that verifies clean."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from replicator.config import Settings, load_settings
from replicator.core.mapping import TableMapping, to_item
from replicator.errors import ReplicatorError
from replicator.ops.tables import SHARDS_TAG, ensure_table, table_definition
from replicator.ops.verify import VerifyOptions, Window, verify
from replicator.reads.dynamo import DynamoReads
from replicator.reads.postgres import PostgresReads
from replicator.stream.rows import source_row
from tests.integration.helpers import cli, wait_for
from tests.integration.reads_data import ReadsWorld, build_world
from tests.integration.test_reads import (
    all_pages,
    expected_ids,
    list_cases,
    oracle_logs,
    oracle_payments,
    typed,
)
from tests.unit.factories import shard_logs

pytestmark = pytest.mark.stack

SHARDS = 4
SUFFIX = f"_shards{uuid.uuid4().hex[:6]}"


def _shard(data: dict[str, Any]) -> None:
    for table in data["tables"]:
        if table["source"] == "dbo.integrationlogs":
            shard_logs(table, SHARDS)


STARTED: list[str] = []  # when the world began to be written (ISO), for a replay of it


@pytest.fixture(scope="module")
def world(consumer_factory: Any, pg: psycopg.Connection[Any], dynamodb: Any) -> Any:
    STARTED.append((dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat())
    built = build_world(consumer_factory, pg, SUFFIX, _shard)
    yield built
    if built.consumer.alive():
        assert built.consumer.stop() == 0, f"consumer exited badly; see {built.consumer.log}"
    for table in (built.logs_table, built.payments_table):
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=table)


@pytest.fixture(scope="module")
def stores(world: ReadsWorld) -> Any:
    postgres, dynamo = PostgresReads(world.settings), DynamoReads(world.settings)
    yield postgres, dynamo
    postgres.close()
    dynamo.close()


def logs_mapping(settings: Settings) -> TableMapping:
    return next(m for m in settings.tables if m.source == "dbo.integrationlogs")


def test_the_logs_are_sharded_four_ways(world: ReadsWorld, dynamodb: Any) -> None:
    mapping = logs_mapping(world.settings)
    assert mapping.shards == SHARDS
    items = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=world.logs_table):
        items += [i for i in page["Items"] if "_deleted" not in i]
    assert len(items) > 300
    shards = Counter(i["PK"]["S"].rsplit("#", 1)[1] for i in items)
    assert set(shards) == {"0", "1", "2", "3"} and min(shards.values()) > 40, shards
    for item in items:
        assert item["PK"]["S"].endswith(f"#{int(item['LogId']['N']) % SHARDS}")
        if "GSI1PK" in item:
            assert item["GSI1PK"]["S"].endswith(f"#{int(item['LogId']['N']) % SHARDS}")
        if "GSI2PK" in item:
            assert item["GSI2PK"]["S"].count("#") == 1  # the correlation index is not sharded


def test_every_pattern_is_identical_on_both_stores_with_four_shards(
    world: ReadsWorld, stores: Any, pg: psycopg.Connection[Any]
) -> None:
    postgres, dynamo = stores
    w = world
    total = multi_page = 0
    for pattern, args, limit in list_cases(w):
        id_attribute = "LogId" if "log" in pattern or "failures" in pattern else "PaymentId"
        state: dict[str, Any] = {}

        def converged(
            pattern: str = pattern,
            args: Any = args,
            limit: int = limit,
            state: dict[str, Any] = state,
            id_attribute: str = id_attribute,
        ) -> bool:
            from_pg = all_pages(postgres, pattern, args, limit)
            from_dynamo = all_pages(dynamo, pattern, args, limit)
            want = expected_ids(pattern, args, oracle_logs(pg, w), oracle_payments(pg, w))
            got = [r[id_attribute] for p in from_dynamo for r in p.rows]
            state.update(pg=from_pg, dynamo=from_dynamo, want=want, got=got)
            return typed(from_pg) == typed(from_dynamo) and got == want

        try:
            wait_for(converged, 90, interval_s=0.5, what=f"{pattern}{args}")
        except AssertionError:
            pg_ids = [r[id_attribute] for p in state["pg"] for r in p.rows]
            raise AssertionError(
                f"{pattern}{args}: postgres {pg_ids}\ndynamodb {state['got']}\n"
                f"oracle {state['want']}"
            ) from None
        pages = state["dynamo"]
        # Full pages until the last, which says there is no more; no row twice.
        assert all(len(p.rows) == limit for p in pages[:-1]) and pages[-1].next is None
        assert len(set(state["got"])) == len(state["got"])
        assert {p.source for p in pages} == {"dynamodb"}
        total += len(state["want"])
        multi_page += len(pages) > 2
    assert total > 800 and multi_page >= 12, (total, multi_page)


def test_single_row_patterns_and_cursors_across_stores(world: ReadsWorld, stores: Any) -> None:
    postgres, dynamo = stores
    w = world
    for key in [*w.log_ids[:: len(w.log_ids) // 12], w.big_log_id, *w.deleted_log_ids[:3]]:
        wait_for(
            lambda k=key: typed(postgres.log_by_id(k)) == typed(dynamo.log_by_id(k)),
            60,
            interval_s=0.5,
            what=f"log_by_id({key}) equal",
        )
    assert all(dynamo.log_by_id(i) is None for i in w.deleted_log_ids)
    # A cursor of the merged shards continues on PostgreSQL, and the other way round.
    d = w.log_days
    args = (w.services[0], d[0].isoformat(), (d[-1] + dt.timedelta(days=2)).isoformat())
    for first, second in ((dynamo, postgres), (postgres, dynamo)):
        page = first.logs_by_service(*args, limit=7)
        assert page.next is not None
        assert typed(second.logs_by_service(*args, limit=7, after=page.next)) == typed(
            first.logs_by_service(*args, limit=7, after=page.next)
        )
        apps = first.logs_by_application(w.apps[0], limit=5)
        assert typed(second.logs_by_application(w.apps[0], limit=5, after=apps.next)) == typed(
            first.logs_by_application(w.apps[0], limit=5, after=apps.next)
        )


def _window(w: ReadsWorld) -> Window:
    since = dt.datetime.combine(w.log_days[0], dt.time())
    return Window("logtimestamp", since, since + dt.timedelta(days=len(w.log_days) + 2))


def test_verify_over_the_sharded_table_is_clean_and_repairs_at_sharded_keys(
    world: ReadsWorld, stores: Any, pg: psycopg.Connection[Any], dynamodb: Any
) -> None:
    w, mapping = world, logs_mapping(world.settings)
    options = VerifyOptions(window=_window(w), record=False)
    report = wait_for(
        lambda: (r := verify(w.settings, mapping, options)).clean and r,
        120,
        interval_s=2,
        what="a clean verify of the sharded table",
    )
    assert report.matched == len(w.log_ids) and report.missing == report.extra == 0, report

    # Plant: one item gone, one changed, one left at its unsharded (design) key.
    ids = [i for i in w.log_ids if i != w.big_log_id][:3]
    rows = {
        r["logid"]: source_row(r)
        for r in pg.cursor(row_factory=psycopg.rows.dict_row).execute(
            "SELECT * FROM dbo.integrationlogs WHERE logid = ANY(%s)", [ids]
        )
    }
    sharded = {i: to_item(mapping, rows[i])[0] for i in ids}
    keys = {i: {a: sharded[i][a] for a in mapping.key_attributes} for i in ids}
    dynamodb.delete_item(TableName=w.logs_table, Key=keys[ids[0]])
    dynamodb.update_item(
        TableName=w.logs_table,
        Key=keys[ids[1]],
        UpdateExpression="SET StatusCode = :s",
        ExpressionAttributeValues={":s": {"S": "tampered"}},
    )
    unsharded = mapping.model_copy(
        update={"shards": 1, "partition_key": mapping.partition_key.model_copy(
            update={"template": "{servicename}-{logtimestamp:date}"})}
    )  # fmt: skip
    stray = to_item(unsharded, rows[ids[2]])[0]
    dynamodb.put_item(TableName=w.logs_table, Item=stray)
    found = verify(w.settings, mapping, VerifyOptions(window=_window(w), record=False))
    assert (found.missing, found.differing, found.extra) == (1, 1, 1), found.divergences
    shown = {d.kind: d for d in found.divergences}
    assert shown["missing"].key["PK"].endswith(f"#{ids[0] % SHARDS}")
    assert shown["extra"].key["PK"] == stray["PK"]["S"] and "#" not in stray["PK"]["S"]

    repaired = verify(
        w.settings, mapping, VerifyOptions(window=_window(w), repair=True, record=False)
    )
    assert repaired.repaired == 3 and repaired.repair_skipped == 0, repaired
    clean = verify(w.settings, mapping, VerifyOptions(window=_window(w), record=False))
    assert clean.clean and clean.matched == len(w.log_ids), clean.divergences
    got = dynamodb.get_item(TableName=w.logs_table, Key=keys[ids[0]], ConsistentRead=True)
    assert got["Item"]["PK"]["S"].endswith(f"#{ids[0] % SHARDS}")


def test_tables_create_refuses_a_table_keyed_for_another_shard_count(
    world: ReadsWorld, dynamodb: Any
) -> None:
    mapping = logs_mapping(world.settings)
    arn = dynamodb.describe_table(TableName=world.logs_table)["Table"]["TableArn"]
    tags = dynamodb.list_tags_of_resource(ResourceArn=arn)["Tags"]
    assert {"Key": SHARDS_TAG, "Value": str(SHARDS)} in tags
    assert ensure_table(dynamodb, mapping) == "exists"
    two = TableMapping.model_validate({**mapping.model_dump(), "shards": 2})
    with pytest.raises(ReplicatorError, match=r"keyed for shards: 4.*resharding"):
        ensure_table(dynamodb, two)
    # A table made before shards existed (no tag) that holds items is unsharded.
    legacy = f"IntegrationLogs{SUFFIX}_legacy"
    definition = mapping.model_copy(update={"name": legacy})
    with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
        dynamodb.delete_table(TableName=legacy)
    request = {k: v for k, v in table_definition(definition).items() if k != "Tags"}
    dynamodb.create_table(**request)
    try:
        dynamodb.get_waiter("table_exists").wait(TableName=legacy)
        assert ensure_table(dynamodb, definition) == "exists"  # empty: tagged now
        dynamodb.untag_resource(
            ResourceArn=dynamodb.describe_table(TableName=legacy)["Table"]["TableArn"],
            TagKeys=[SHARDS_TAG],
        )
        dynamodb.put_item(TableName=legacy, Item={"PK": {"S": "a-2024-01-01"}, "SK": {"S": "x"}})
        with pytest.raises(ReplicatorError, match="unsharded items"):
            ensure_table(dynamodb, definition)
    finally:
        dynamodb.delete_table(TableName=legacy)


def _config_with(world: ReadsWorld, folder: Path, **logs: Any) -> Path:
    """The world's consumer config with the logs mapping's fields changed."""
    data = yaml.safe_load(world.consumer.config.read_text())
    for table in data["tables"]:
        if table["source"] == "dbo.integrationlogs":
            table.update(logs)
    path = folder / f"replicator-{'-'.join(f'{k}{v}' for k, v in logs.items())}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_tables_create_names_the_shard_mismatch_without_a_traceback(
    world: ReadsWorld, tmp_path: Path
) -> None:
    config = _config_with(world, tmp_path, shards=2)
    done = cli(config, "tables", "create", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "keyed for shards: 4" in done.stderr and "resharding.md" in done.stderr
    assert "Traceback" not in done.stderr


def test_resharding_is_a_backfill_into_a_new_table(
    world: ReadsWorld, dynamodb: Any, tmp_path: Path
) -> None:
    w = world
    target = f"{w.logs_table}_s2"
    config = _config_with(w, tmp_path, shards=2)
    try:
        done = cli(
            config, "backfill", "--table", w.logs_table, "--into", target,
            "--from-time", STARTED[0], timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        arn = dynamodb.describe_table(TableName=target)["Table"]["TableArn"]
        assert {"Key": SHARDS_TAG, "Value": "2"} in dynamodb.list_tags_of_resource(ResourceArn=arn)[
            "Tags"
        ]
        # The new table's mapping is the re-sharded one under the new name: verify it there.
        renamed = load_settings(_config_with(w, tmp_path, shards=2, name=target))
        mapping = logs_mapping(renamed)
        report = verify(renamed, mapping, VerifyOptions(window=_window(w), record=False))
        assert report.clean and report.matched == len(w.log_ids), report.divergences
        items = []
        for page in dynamodb.get_paginator("scan").paginate(TableName=target):
            items += [i for i in page["Items"] if "_deleted" not in i]
        ours = [i for i in items if i.get("ServiceName", {}).get("S") in w.services]
        assert len(ours) == len(w.log_ids)
        assert {i["PK"]["S"].rsplit("#", 1)[1] for i in ours} == {"0", "1"}
        # And the read path over it answers as PostgreSQL does.
        postgres, dynamo = PostgresReads(renamed), DynamoReads(renamed)
        try:
            for pattern, args, limit in list_cases(w):
                if pattern.startswith("payments"):
                    continue
                assert typed(all_pages(dynamo, pattern, args, limit)) == typed(
                    all_pages(postgres, pattern, args, limit)
                ), (pattern, args)
        finally:
            postgres.close()
            dynamo.close()
    finally:
        with contextlib.suppress(dynamodb.exceptions.ResourceNotFoundException):
            dynamodb.delete_table(TableName=target)


def test_run_refuses_a_table_keyed_for_another_shard_count(
    world: ReadsWorld, tmp_path: Path
) -> None:
    config = _config_with(world, tmp_path, shards=2)
    done = cli(config, "run", "--until-idle", "1", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "keyed for shards: 4, the mapping says shards: 2" in done.stderr
    assert "Traceback" not in done.stderr
