"""Source schema changes: the pure shape and conversion rules (core.schema), the consumer's
watch over them (stream.schema) and what the pipeline does with each kind of change."""

from __future__ import annotations

from typing import Any

import pytest
from factories import create_record, days, log_row, micros, payment_row, update_record
from test_metrics import FakeDeadLetters, FakeDynamo, FakeMessage, FakeSource, NoLookups, value

from replicator.config import Settings, default_tables
from replicator.core.events import ChangeEvent, Op, Origin, Position
from replicator.core.mapping import UNAVAILABLE, TableMapping
from replicator.core.schema import (
    Included,
    Shape,
    column_type,
    compatible,
    included_attributes,
    pascal_case,
    plan_included,
    required,
    shape,
)
from replicator.errors import LookupUnavailableError, MappingError
from replicator.observe.metrics import Metrics
from replicator.stream.pipeline import Pipeline
from replicator.stream.schema import Catalog, SchemaError, SchemaWatch
from replicator.stream.sink import DynamoSink

LOGS, PAYMENTS = default_tables()
LOGS_INCLUDE = LOGS.model_copy(update={"unmapped_columns": "include"})


# --- core.schema: types, names, shapes ---------------------------------------------------


@pytest.mark.parametrize(
    ("source_type", "kind"),
    [
        ("smallint", "int"),
        ("integer", "int"),
        ("bigint", "bigint"),
        ("numeric", "decimal"),
        ("numeric(10,2)", "decimal"),
        ("text", "text"),
        ("character varying(50)", "text"),
        ("character(3)", "text"),
        ("uuid", "text"),
        ("timestamp with time zone", "text"),
        ("json", "json"),
        ("jsonb", "json"),
        ("boolean", "bool"),
        ("date", "date"),
        ("timestamp without time zone", "timestamp"),
        ("timestamp(6) without time zone", "timestamp"),
        ("timestamp(4) without time zone", "timestamp"),
        ("timestamp(3) without time zone", None),  # milliseconds, not MicroTimestamp
        ("real", None),
        ("double precision", None),
        ("bytea", None),
        ("integer[]", None),
        ("interval", None),
    ],
)
def test_each_postgresql_type_has_the_rules_of_its_debezium_form(
    source_type: str, kind: str | None
) -> None:
    assert column_type(source_type) == kind


def test_a_mapped_type_takes_only_source_types_whose_values_it_reads_right() -> None:
    assert compatible("int", "bigint") and compatible("decimal", "integer")
    assert compatible("json", "text") and compatible("text", "character varying(20)")
    assert not compatible("int", "text")
    assert not compatible("timestamp", "date")  # days would be read as microseconds
    assert not compatible("date", "timestamp without time zone")
    assert not compatible("decimal", "double precision")


def test_an_unmapped_column_is_named_in_pascal_case() -> None:
    assert pascal_case("loyalty_points") == "LoyaltyPoints"
    assert pascal_case("riskscore") == "Riskscore"
    assert pascal_case("_x_y") == "XY"


def test_a_row_is_compared_with_the_mapping_without_its_lookup_columns() -> None:
    row = {**log_row(), "riskscore": 5}
    del row["userid"]
    assert shape(LOGS, row) == Shape(("riskscore",), ("userid",))
    assert shape(LOGS, log_row()) == Shape((), ())
    payment = {**payment_row(), "customerid": 9}  # added by the lookup, not the source's
    assert shape(PAYMENTS, payment) == Shape((), ())


def test_only_not_null_columns_are_required() -> None:
    assert required(LOGS, ["userid", "logtype", "issuccess"]) == ["logtype", "issuccess"]
    loose = LOGS.model_copy(
        update={"columns": [c.model_copy(update={"nullable": True}) for c in LOGS.columns]}
    )
    assert required(loose, ["logid", "logtype"]) == ["logid"]  # the primary key, whatever it says


def test_included_columns_avoid_the_mappings_names_and_types_without_an_exact_rule() -> None:
    included, left_out = plan_included(
        LOGS,
        {
            "riskscore": "numeric(12,4)",
            "user_id": "text",  # UserId is the mapping's already
            "ratio": "double precision",
            "gone": None,
        },
    )
    assert included == [Included("riskscore", "Riskscore", "decimal")]
    assert set(left_out) == {"user_id", "ratio", "gone"}
    assert "UserId" in left_out["user_id"] and "double precision" in left_out["ratio"]


def test_included_columns_convert_by_their_types_rules() -> None:
    included = [
        Included("points", "Points", "bigint"),
        Included("amount", "Amount", "decimal"),
        Included("note", "Note", "text"),
        Included("flag", "Flag", "bool"),
        Included("seen", "Seen", "timestamp"),
        Included("due", "Due", "date"),
        Included("doc", "Doc", "json"),
        Included("empty", "Empty", "text"),
        Included("toasted", "Toasted", "text"),
    ]
    row = {
        "points": 9_007_199_254_740_993,  # above 2**53: a float would lose it
        "amount": "12345678901234567890.123456789",
        "note": "n",
        "flag": False,
        "seen": micros(2024, 1, 15, 10, 30, 0, 123456),
        "due": days(2024, 2, 29),
        "doc": '{"a": 1}',
        "empty": None,
        "toasted": UNAVAILABLE,
    }
    item, unavailable = included_attributes(included, row)
    assert item == {
        "Points": {"N": "9007199254740993"},
        "Amount": {"N": "12345678901234567890.123456789"},
        "Note": {"S": "n"},
        "Flag": {"BOOL": False},
        "Seen": {"S": "2024-01-15T10:30:00.123456Z"},
        "Due": {"S": "2024-02-29"},
        "Doc": {"S": '{"a": 1}'},
    }
    assert unavailable == {"Toasted"}


def test_an_included_value_its_type_cannot_convert_is_refused() -> None:
    with pytest.raises(MappingError, match="'points'"):
        included_attributes([Included("points", "Points", "int")], {"points": "12a"})


# --- stream.schema: the watch --------------------------------------------------------------


class FakeCatalog(Catalog):
    """The catalog's answers, set by the test; counts the questions."""

    def __init__(self, tables: dict[str, dict[str, str]]) -> None:
        super().__init__("")
        self.tables = tables
        self.asked = 0

    def columns(self, table: str) -> dict[str, str]:
        self.asked += 1
        return dict(self.tables.get(table, {}))


def event(row: dict[str, Any], lsn: int, op: Op = Op.UPSERT) -> ChangeEvent:
    return ChangeEvent(
        LOGS.source, op, {"logid": row.get("logid")}, row, None, Position(lsn, 1, lsn), 0, False,
        Origin("t", 0, lsn),
    )  # fmt: skip


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    info = warning


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Lines:
    import replicator.stream.schema

    recording = Lines()
    monkeypatch.setattr(replicator.stream.schema, "log", recording)
    return recording


LOG_TYPES = {"logid": "bigint", "riskscore": "numeric(12,4)", "userid": "character varying(100)"}


def test_an_unmapped_column_is_reported_once_then_gone_then_again(lines: Lines) -> None:
    metrics = Metrics()
    watch = SchemaWatch(FakeCatalog({LOGS.source: LOG_TYPES}).columns, metrics)
    gauge = {"table": "IntegrationLogs", "column": "riskscore"}
    watch.check(LOGS, event(log_row(), 10))
    for lsn in (11, 12, 13):
        assert watch.check(LOGS, event({**log_row(), "riskscore": "1.5"}, lsn)) == []
    assert [e for e, _ in lines.lines] == ["source column not in the mapping"]
    assert lines.lines[0][1]["type"] == "numeric(12,4)"
    assert "ignore" in lines.lines[0][1]["outcome"]
    assert value(metrics, "replicator_unmapped_columns", **gauge) == 1
    watch.check(LOGS, event(log_row(), 14))  # dropped again
    assert metrics.registry.get_sample_value("replicator_unmapped_columns", gauge) is None
    watch.check(LOGS, event({**log_row(), "riskscore": "2"}, 15))  # and added again
    assert [e for e, _ in lines.lines] == [
        "source column not in the mapping",
        "unmapped source column gone",
        "source column not in the mapping",
    ]
    assert value(metrics, "replicator_unmapped_columns", **gauge) == 1


def test_an_older_row_from_another_partition_does_not_undo_the_newer_shape(lines: Lines) -> None:
    metrics = Metrics()
    watch = SchemaWatch(FakeCatalog({LOGS.source: LOG_TYPES}).columns, metrics)
    watch.check(LOGS, event({**log_row(), "riskscore": "1"}, 20))
    watch.check(LOGS, event(log_row(), 19))  # committed before the ALTER, arrived later
    assert (
        value(metrics, "replicator_unmapped_columns", table="IntegrationLogs", column="riskscore")
        == 1
    )
    assert len(lines.lines) == 1


def test_include_writes_the_column_by_its_catalog_type(lines: Lines) -> None:
    catalog = FakeCatalog({LOGS.source: LOG_TYPES})
    watch = SchemaWatch(catalog.columns, Metrics())
    for lsn in (1, 2, 3):
        included = watch.check(LOGS_INCLUDE, event({**log_row(), "riskscore": "1.25"}, lsn))
    assert included == [Included("riskscore", "Riskscore", "decimal")]
    assert catalog.asked == 1  # once, when the column was first seen
    assert "written as Riskscore" in lines.lines[0][1]["outcome"]


def test_a_dropped_nullable_column_is_reported_and_not_refused(lines: Lines) -> None:
    metrics = Metrics()
    watch = SchemaWatch(None, metrics)
    row = log_row()
    del row["userid"]
    watch.check(LOGS, event(row, 1))
    watch.check(LOGS, event(row, 2))
    assert (
        value(metrics, "replicator_missing_columns", table="IntegrationLogs", column="userid") == 1
    )
    assert [f["outcome"] for _, f in lines.lines] == ["attribute removed from the items written"]


def test_a_missing_not_null_column_refuses_every_event(lines: Lines) -> None:
    watch = SchemaWatch(None, Metrics())
    row = log_row()
    del row["logtype"]
    for lsn in (1, 2):
        with pytest.raises(SchemaError, match=r"^dbo\.integrationlogs: .*'logtype'"):
            watch.check(LOGS, event(row, lsn))
    assert len(lines.lines) == 1 and "dead-lettered" in lines.lines[0][1]["outcome"]


def test_a_changed_type_is_named_in_the_reason() -> None:
    catalog = FakeCatalog({LOGS.source: {**LOG_TYPES, "processingtimems": "text"}})
    watch = SchemaWatch(catalog.columns, Metrics())
    reason, detail = watch.explain(
        LOGS, MappingError("column 'processingtimems': expected an integer, got 'slow'")
    )
    assert reason == "schema"
    assert "'processingtimems' is mapped as int, the source column is now text" in detail
    assert detail.startswith("dbo.integrationlogs")
    other = SchemaWatch(FakeCatalog({LOGS.source: LOG_TYPES}).columns, Metrics())
    assert other.explain(LOGS, MappingError("x"))[0] == "mapping"


# --- the pipeline --------------------------------------------------------------------------


class RecordingDynamo(FakeDynamo):
    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []
        self.transactions: list[list[dict[str, Any]]] = []

    def put_item(self, **request: Any) -> dict[str, Any]:
        self.items.append(request["Item"])
        return super().put_item(**request)

    update_item = put_item

    def transact_write_items(self, **request: Any) -> dict[str, Any]:
        self.transactions.append(request["TransactItems"])
        return {}


def a_pipeline(mapping: TableMapping, types: dict[str, str]) -> tuple[Pipeline, RecordingDynamo]:
    client = RecordingDynamo()
    settings = Settings(tables=[mapping, PAYMENTS])
    p = Pipeline(
        settings,
        FakeSource(),  # type: ignore[arg-type]
        DynamoSink(client, concurrency=2),
        NoLookups(),  # type: ignore[arg-type]
        FakeDeadLetters(),  # type: ignore[arg-type]
        catalog=FakeCatalog({LOGS.source: types}),
    )
    return p, client


def parked(p: Pipeline) -> list[tuple[str, str]]:
    return [(reason, detail) for _, reason, detail in p.dead_letters.parked]  # type: ignore[attr-defined]


def test_the_pipeline_writes_an_included_column_and_parks_a_missing_not_null_one() -> None:
    p, client = a_pipeline(LOGS_INCLUDE, LOG_TYPES)
    lacking = log_row(logid=2)
    del lacking["servicename"]
    p.process(
        [
            FakeMessage(create_record(LOGS.source, {**log_row(logid=1), "riskscore": "0.0625"})),
            FakeMessage(create_record(LOGS.source, {**lacking, "riskscore": None})),
        ]
    )
    assert [i["Riskscore"] for i in client.items] == [{"N": "0.0625"}]
    [(reason, detail)] = parked(p)
    assert reason == "schema" and "'servicename'" in detail and "NOT NULL" in detail


def test_the_pipeline_parks_a_value_the_changed_type_cannot_convert_naming_both_types() -> None:
    p, client = a_pipeline(LOGS, {**LOG_TYPES, "processingtimems": "text"})
    p.process([FakeMessage(create_record(LOGS.source, log_row(logid=1, processingtimems="slow")))])
    [(reason, detail)] = parked(p)
    assert reason == "schema"
    assert "mapped as int, the source column is now text" in detail and "'slow'" in detail
    assert client.items == []


def test_a_key_move_is_still_seen_after_a_mapped_nullable_column_was_dropped() -> None:
    p, client = a_pipeline(LOGS, LOG_TYPES)
    old = log_row(logid=3)
    del old["userid"]
    moved = {**old, "servicename": "SmsService"}
    p.process([FakeMessage(update_record(LOGS.source, old, moved))])
    assert parked(p) == []
    # A key move is one transaction: the new item and a marker at the old key.
    assert client.transactions and len(client.transactions[0]) == 2
    assert all("UserId" not in a.get("Put", {}).get("Item", {}) for a in client.transactions[0])


def test_verify_expects_the_included_columns_of_the_current_catalog() -> None:
    from replicator.core.schema import included_columns
    from replicator.ops.verify import expect

    types = {**LOG_TYPES, "riskscore": "numeric(12,4)", "ratio": "real"}
    assert included_columns(LOGS, types) == []  # ignore: nothing written, nothing expected
    included = included_columns(LOGS_INCLUDE, types)
    assert included == [Included("riskscore", "Riskscore", "decimal")]
    row = {**log_row(), "riskscore": "0.5000", "ratio": 0.5}
    item = expect(LOGS_INCLUDE, {"logid": 1}, row, included).item
    assert item is not None and item["Riskscore"] == {"N": "0.5000"} and "Ratio" not in item


class FlakyCatalog(FakeCatalog):
    """PostgreSQL does not answer the first question."""

    def columns(self, table: str) -> dict[str, str]:
        if self.asked == 0:
            self.asked += 1
            raise LookupUnavailableError("column types: PostgreSQL unreachable")
        return super().columns(table)


def test_a_catalog_outage_waits_and_parks_nothing() -> None:
    p, client = a_pipeline(LOGS_INCLUDE, LOG_TYPES)
    p.catalog = FlakyCatalog({LOGS.source: LOG_TYPES})
    p.schema = SchemaWatch(p.catalog.columns, p.metrics)
    p.process([FakeMessage(create_record(LOGS.source, {**log_row(), "riskscore": "3"}))])
    assert parked(p) == [] and p.catalog.asked == 2
    assert client.items[0]["Riskscore"] == {"N": "3"}


def test_an_old_row_whose_lookup_misses_still_parks_the_key_move() -> None:
    # The old row holds the lookup's own column (loanid): its key is computed, and a lookup
    # that found nothing for it parks the event rather than missing the move.
    from replicator.core.mapper import mapper

    assert mapper(PAYMENTS).key_columns == {"loanid", "paymentdate", "paymentid"}
    row = {**payment_row(), "customerid": 7}
    before = payment_row()  # its loan's customer was not found
    moved = ChangeEvent(
        PAYMENTS.source, Op.UPSERT, {"paymentid": 1}, row, before, Position(1, 1, 1), 0, False,
        Origin("t", 0, 0),
    )  # fmt: skip
    from replicator.errors import LookupMissError
    from replicator.stream.pipeline import to_change

    with pytest.raises(LookupMissError):
        to_change(PAYMENTS, moved)
