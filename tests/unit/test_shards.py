"""Sharded partition keys (issue 16, hot partitions): the {column:shard} template format and the
`shards` of a mapping, checked at load; the keys the reference and the compiled mapper make;
key moves across shards; the read patterns' shard fan-out, and paging over merged shards that
neither skips nor repeats a row."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from factories import log_row, micros, shard_logs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_mapper import outcome, rows_of

from replicator.config import default_tables
from replicator.core.events import ChangeEvent, Op, Origin, Position
from replicator.core.mapper import Mapper
from replicator.core.mapping import TableMapping, item_key, template_fields, to_item
from replicator.ops.tables import SHARDS_TAG, shards_refusal, table_definition
from replicator.reads.dynamo import merge_newest_first, shard_page
from replicator.reads.patterns import Pattern, decode_cursor, encode_cursor
from replicator.stream.layout import run_refusal
from replicator.stream.pipeline import to_change

LOGS, PAYMENTS = default_tables()


def logs_data(shards: int | None = None) -> dict[str, Any]:
    data = LOGS.model_dump()
    if shards is not None:
        shard_logs(data, shards)
    return data


def sharded(shards: int) -> TableMapping:
    return TableMapping.model_validate(logs_data(shards))


def refused(data: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        TableMapping.model_validate(data)


# --- the template format and the mapping's checks -----------------------------------------


def test_the_default_mapping_is_unsharded_and_keeps_the_design_keys() -> None:
    assert LOGS.shards == PAYMENTS.shards == 1
    assert LOGS.partition_key.template == "{servicename}-{logtimestamp:date}"
    assert to_item(LOGS, log_row(logid=7))[0]["PK"] == {"S": "CreditCheckService-2024-01-15"}


def test_shard_suffix_parses_as_a_template_format() -> None:
    assert template_fields("{servicename}-{logtimestamp:date}#{logid:shard}") == [
        ("servicename", ""),
        ("logtimestamp", "date"),
        ("logid", "shard"),
    ]
    with pytest.raises(ValueError, match="'date', 'shard' or '0N'"):
        template_fields("{logid:mod4}")


@pytest.mark.parametrize("shards", [0, 65, -1])
def test_shards_out_of_range_are_refused(shards: int) -> None:
    data = logs_data(4)
    data["shards"] = shards
    refused(data, "shards")


def test_shards_without_a_suffix_and_a_suffix_without_shards_are_refused() -> None:
    data = logs_data()
    data["shards"] = 4
    refused(data, "no key template carries a shard suffix")
    data = logs_data(4)
    data["shards"] = 1
    refused(data, "carry a shard suffix, but shards is 1")


def test_a_suffix_on_a_text_or_unknown_column_is_refused() -> None:
    data = logs_data(4)
    data["partition_key"]["template"] = "{servicename}-{logtimestamp:date}#{servicename:shard}"
    refused(data, "needs an integer column")
    data["partition_key"]["template"] = "{servicename}-{logtimestamp:date}#{nosuch:shard}"
    refused(data, "unknown column 'nosuch'")


def test_a_suffix_in_a_sort_key_or_an_order_is_refused() -> None:
    data = logs_data(4)
    data["sort_key"]["template"] = "{logtimestamp}#{logid:019}#{logid:shard}"
    refused(data, "belongs in a partition key")
    data = logs_data(4)
    for derived in data["derived"]:
        if derived["attribute"] == "GSI2SK":
            derived["template"] = "{logtimestamp}#{logid:shard}"
    refused(data, "belongs in a partition key")


def test_a_pattern_on_a_sharded_key_must_name_the_shard_and_only_then() -> None:
    data = logs_data(4)
    for pattern in data["reads"]["patterns"]:
        if pattern["name"] == "logs_by_service":
            pattern["partition"] = "{service}-{day}"
    refused(data, "logs_by_service.*needs \\{shard\\}")
    data = logs_data(4)
    for pattern in data["reads"]["patterns"]:
        if pattern["name"] == "logs_by_correlation":  # GSI2PK carries no suffix
            pattern["partition"] = "CORR#{correlation_id}#{shard}"
    refused(data, "partition names 'shard'")


@pytest.mark.parametrize(
    "partition", ["{service}-{day}-{shard}", "{service}-{day}{shard}", "{service}-{shard}#{day}"]
)
def test_a_pattern_shard_where_the_key_has_none_is_refused(partition: str) -> None:
    # PK is '{servicename}-{logtimestamp:date}#{logid:shard}': "#" before, nothing after.
    data = logs_data(4)
    for pattern in data["reads"]["patterns"]:
        if pattern["name"] == "logs_by_service":
            pattern["partition"] = partition
    refused(data, "must sit between the same text as the shard suffix of 'PK'")


# --- keys: the reference path and the compiled one ----------------------------------------


def test_sharded_keys_are_the_column_mod_shards() -> None:
    mapping = sharded(4)
    for logid, shard in [(1, 1), (4, 0), (7, 3), (2**63 - 1, 3), (-1, 3), (-4, 0)]:
        row = log_row(logid=logid, issuccess=False)
        item, _ = to_item(mapping, row)
        assert item["PK"] == {"S": f"CreditCheckService-2024-01-15#{shard}"}
        assert item["GSI1PK"] == {"S": f"APP#1#{shard}"}
        assert item["GSI3PK"] == {"S": f"ERROR#2024-01-15#{shard}"}
        assert item["GSI2PK"] == {"S": "CORR#c-1"}  # not sharded
        assert item["SK"] == to_item(LOGS, row)[0]["SK"]  # sort keys are unchanged
        assert Mapper(mapping).to_item(row) == (item, set())


@pytest.mark.parametrize("shards", [2, 4, 64])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_sharded_keys_equal_the_reference(shards: int, data: st.DataObject) -> None:
    mapping = sharded(shards)
    row = data.draw(rows_of(mapping))
    compiled = Mapper(mapping)
    assert compiled._compiled
    assert outcome(compiled.to_item, row) == outcome(to_item, mapping, row)
    assert outcome(compiled.item_key, row) == outcome(item_key, mapping, row)


@settings(max_examples=200, deadline=None)
@given(logid=st.integers(min_value=-(2**63), max_value=2**63 - 1), shards=st.integers(2, 64))
def test_every_id_lands_on_one_of_the_shards(logid: int, shards: int) -> None:
    key = Mapper(sharded(shards)).item_key(log_row(logid=logid))
    suffix = int(key["PK"]["S"].rsplit("#", 1)[1])
    assert suffix == logid % shards and 0 <= suffix < shards


def test_a_change_of_the_shard_column_moves_the_key() -> None:
    # Sharded by a column that an UPDATE can change (not the primary key).
    data = logs_data(4)
    data["partition_key"]["template"] = "{servicename}-{logtimestamp:date}#{applicationid:shard}"
    mapping = TableMapping.model_validate(data)
    before, after = log_row(logid=9, applicationid=1), log_row(logid=9, applicationid=2)
    event = ChangeEvent(
        table=mapping.source,
        op=Op.UPSERT,
        key={"logid": 9},
        row=after,
        before=before,
        position=Position(1, 1, 1),
        source_ts_ms=0,
        snapshot=False,
        origin=Origin("t", 0, 0),
    )
    change = to_change(mapping, event)
    assert change.key["PK"] == {"S": "CreditCheckService-2024-01-15#2"}
    assert change.old_key == {
        "PK": {"S": "CreditCheckService-2024-01-15#1"},
        "SK": change.key["SK"],
    }
    # The same id in the same shard: no move.
    same = dataclasses.replace(event, before=log_row(logid=9, applicationid=6))
    assert to_change(mapping, same).old_key is None


# --- reads: fan-out and merged pages ------------------------------------------------------


def patterns(mapping: TableMapping) -> dict[str, Pattern]:
    return {d.name: Pattern.of(mapping, d) for d in mapping.reads.patterns}


def test_patterns_fan_out_over_the_shards_of_their_key_only() -> None:
    found = patterns(sharded(4))
    assert {name: p.shards for name, p in found.items()} == {
        "logs_by_application": 4,
        "logs_by_service": 4,
        "logs_by_correlation": 1,
        "failures_of_day": 4,
        "log_by_id": 1,
    }
    assert found["logs_by_service"].partitions("Svc", "2024-01-15") == [
        {"S": f"Svc-2024-01-15#{n}"} for n in range(4)
    ]
    assert found["logs_by_correlation"].partitions("c-1") == [{"S": "CORR#c-1"}]
    assert {p.shards for p in patterns(LOGS).values()} == {1}
    # Each partition a pattern queries is where the mapping put the item.
    row = log_row(logid=6, applicationid=42, issuccess=False)
    item, _ = to_item(sharded(4), row)
    assert item["GSI1PK"] in found["logs_by_application"].partitions(42)
    assert item["GSI3PK"] in found["failures_of_day"].partitions(None, "2024-01-15")


def _shard_lists(keys: list[str], shards: int) -> list[list[dict[str, Any]]]:
    """Items with sort key SK, spread over shards by their id, each shard newest first."""
    lists: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
    for key in keys:
        lists[int(key.rsplit("#", 1)[1]) % shards].append({"SK": {"S": key}})
    return [sorted(s, key=lambda i: i["SK"]["S"], reverse=True) for s in lists]


def _page(
    lists: list[list[dict[str, Any]]], after: str | None, limit: int
) -> tuple[list[str], str | None]:
    """A page as DynamoReads makes one: every shard asked for keys below the cursor, merged,
    limit + 1 taken; the cursor is the last key returned when more follow."""
    streams = [iter([i for i in s if after is None or i["SK"]["S"] < after]) for s in lists]
    taken = []
    for item in merge_newest_first(streams, "SK"):
        taken.append(item["SK"]["S"])
        if len(taken) > limit:
            break
    rows = taken[:limit]
    return rows, (rows[-1] if len(taken) > limit else None)


@settings(max_examples=300, deadline=None)
@given(
    ids=st.sets(st.integers(1, 10**6), max_size=120),
    times=st.integers(1, 5),
    shards=st.integers(1, 8),
    limit=st.integers(1, 30),
    seed=st.integers(0, 1000),
)
def test_pages_over_merged_shards_neither_skip_nor_repeat(
    ids: set[int], times: int, shards: int, limit: int, seed: int
) -> None:
    rng = random.Random(seed)
    # Few distinct timestamps: many ties, broken by the id as in the order attribute.
    stamps = [f"2024-01-15T10:0{t}:00.000000Z" for t in range(times)]
    keys = [f"{rng.choice(stamps)}#{i:019d}" for i in ids]
    lists = _shard_lists(keys, shards)
    seen: list[str] = []
    after = None
    for _ in range(len(keys) + 2):
        # The cursor as the read path hands it out and takes it back (either store).
        if after is not None:
            cursor = encode_cursor("logs_by_service", ("Svc", None, None), after)
            sort_key = patterns(sharded(4))["logs_by_service"].sort_key
            assert sort_key is not None
            after = decode_cursor("logs_by_service", ("Svc", None, None), cursor, sort_key)
        rows, after = _page(lists, after, limit)
        seen += rows
        assert after is None or len(rows) == limit
        if after is None:
            break
    assert seen == sorted(keys, reverse=True)


def test_merge_reads_each_shard_only_as_far_as_needed() -> None:
    read = [0, 0, 0]

    def stream(n: int, keys: list[str]) -> Any:
        for key in keys:
            read[n] += 1
            yield {"SK": {"S": key}}

    merged = merge_newest_first(
        [stream(0, ["9", "6", "3"]), stream(1, ["8", "5", "2"]), stream(2, ["7", "4", "1"])],
        "SK",
    )
    assert [next(merged)["SK"]["S"] for _ in range(4)] == ["9", "8", "7", "6"]
    # Taken: two of the first shard, one of each other; each read one further (its head).
    assert read == [2, 2, 2]


def test_sharded_reads_keep_the_order_attribute_and_its_time_text() -> None:
    # The order attribute holds no shard: lists stay ordered by time then id on both stores.
    mapping = sharded(4)
    row = log_row(logid=12, logtimestamp=micros(2024, 1, 15, 0, 0, 0, 1))
    item, _ = to_item(mapping, row)
    assert item["SK"] == {"S": "2024-01-15T00:00:00.000001Z#0000000000000000012"}


# --- tables: the shard count a table records ------------------------------------------------


def test_a_table_records_its_shard_count_and_refuses_another() -> None:
    four = sharded(4)
    assert table_definition(four)["Tags"] == [{"Key": SHARDS_TAG, "Value": "4"}]
    assert table_definition(four)["KeySchema"] == table_definition(LOGS)["KeySchema"]
    assert shards_refusal(four, 4, empty=False) is None
    assert shards_refusal(LOGS, 1, empty=False) is None
    assert shards_refusal(LOGS, None, empty=False) is None  # made before shards: unsharded
    assert shards_refusal(four, None, empty=True) is None  # nothing in it is keyed yet
    for recorded, empty in ((None, False), (2, False), (2, True), (1, False)):
        refusal = shards_refusal(four, recorded, empty)
        assert refusal is not None and "resharding.md" in refusal and "shards: 4" in refusal
    assert "keyed for shards: 4" in (shards_refusal(LOGS, 4, empty=True) or "")


def test_each_shard_is_first_asked_for_its_share_of_a_page() -> None:
    assert shard_page(51, 1) == 51
    assert shard_page(51, 4) == 18  # 51 / 4 = 12.75, with a quarter more and two to spare
    assert shard_page(2, 4) == 2  # never more than the page
    assert shard_page(1000, 64) == 22
    for want in range(1, 600):
        for shards in (2, 4, 8, 64):
            assert 1 <= shard_page(want, shards) <= want
            assert shard_page(want, shards) * shards >= want  # one round covers a page


def test_run_refuses_another_count_and_an_untagged_table_of_a_sharded_mapping() -> None:
    four = sharded(4)
    assert run_refusal(four, 4) is None and run_refusal(LOGS, 1) is None
    assert run_refusal(LOGS, None) is None  # made before shards existed, or by hand
    assert "keyed for shards: 2" in (run_refusal(four, 2) or "")
    assert "keyed for shards: 4" in (run_refusal(LOGS, 4) or "")
    assert "tables create" in (run_refusal(four, None) or "")
