"""The compiled mapper (core.mapper) against the mapping it compiles (core.mapping): the same
items, the same keys and the same refusals, on generated rows of several mappings."""

from __future__ import annotations

from typing import Any

import pytest
from factories import log_row, micros, payment_row
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from replicator.config import default_tables
from replicator.core.events import ChangeEvent, Op, Origin, Position
from replicator.core.mapper import Mapper, mapper
from replicator.core.mapping import UNAVAILABLE, TableMapping, item_key, template_fields, to_item
from replicator.core.schema import Included, included_attributes
from replicator.stream.lookup import Lookups
from replicator.stream.pipeline import to_change
from replicator.stream.sink import Change

LOGS, PAYMENTS = default_tables()
LOGS_RETAINED = TableMapping.model_validate(
    {**LOGS.model_dump(), "retention": {"column": "logtimestamp", "days": 90}}
)
LOGS_DEAD_LETTER_LARGE = LOGS.model_copy(update={"large_items": "dead-letter"})
# A third table with what the two design tables do not use: a plain numeric key that is also
# a column, a date and a decimal in keys, zero-padding of a text column (refused per row),
# numeric derived attributes, conditions on text, retention on a date column's neighbour.
NOTES = TableMapping.model_validate(
    {
        "name": "Notes",
        "source": "dbo.notes",
        "primary_key": ["noteid"],
        "partition_key": {"attribute": "NoteId", "type": "N", "template": "{noteid}"},
        "columns": [
            {"name": "noteid", "attribute": "NoteId", "type": "bigint"},
            {"name": "body", "attribute": "Body", "type": "text"},
            {"name": "kind", "attribute": "Kind", "type": "text"},
            {"name": "amount", "attribute": "Amount", "type": "decimal", "scale": 2},
            {"name": "due", "attribute": "Due", "type": "date"},
            {"name": "pinned", "attribute": "Pinned", "type": "bool"},
            {"name": "written", "attribute": "Written", "type": "timestamp"},
            {"name": "meta", "attribute": "Meta", "type": "json"},
        ],
        "derived": [
            {"attribute": "ByDue", "template": "{due}#{amount}", "when_set": ["due"]},
            {"attribute": "AmountN", "type": "N", "template": "{amount}"},
            {"attribute": "Padded", "template": "{kind:05}", "when_equal": {"pinned": True}},
            {"attribute": "Day", "template": "{written:date}", "when_equal": {"kind": "memo"}},
            {"attribute": "Year", "type": "N", "template": "{noteid:03}{noteid}"},
        ],
        "retention": {"column": "written", "days": 3},
    }
)
MAPPINGS = [LOGS, LOGS_RETAINED, LOGS_DEAD_LETTER_LARGE, PAYMENTS, NOTES]

BIG = [
    "x" * (400 * 1024),  # compresses to fit
    "é" * (110 * 1024),  # not ASCII: 220 KB, under the limit, above the cheap bound
    "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(150_000)),  # 450 KB, incompressible
]
WEIRD: list[Any] = [
    None,
    UNAVAILABLE,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    10**40,
    -(10**300),
    1.5,
    "",
    "0",
    "12.50",
    "1e5",
    "-0.001",
    "NaN",
    " 1 ",
    "1_000",
    "9" * 39,
    "memo",
    "é",
    "\x00",
    [],
    {},
    micros(2024, 1, 15, 10, 30, 0, 123456),
    -(10**17),  # before year 1: out of range
    10**17,  # after year 9999
    2_932_896,  # 9999-12-31 as days
    2_932_897,  # one day later
    -719_162,  # 0001-01-01 as days
    -719_163,
]


def values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(WEIRD),
        st.integers(),
        st.integers(min_value=-(2**63), max_value=2**63),
        st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999),
        st.text(max_size=20),
        st.decimals(allow_nan=False, allow_infinity=False).map(str),
        st.booleans(),
        st.floats(allow_nan=False),
        st.sampled_from(BIG),
    )


def rows_of(mapping: TableMapping) -> st.SearchStrategy[dict[str, Any]]:
    """Rows that hold a good value, a bad one or none in each column; sometimes a column
    missing and sometimes one the mapping does not know."""
    if mapping.source == "dbo.integrationlogs":
        base = log_row()
    elif mapping.source == "dbo.payments":
        base = {**payment_row(), "customerid": 7}
    else:
        base = {"noteid": 5, "body": "b", "kind": "memo", "amount": "3.10", "due": 19_000}
        base |= {"pinned": True, "written": micros(2024, 5, 1), "meta": "{}"}
    names = [*base, "unmapped"]
    changed = st.dictionaries(st.sampled_from(names), values(), max_size=4)
    dropped = st.sets(st.sampled_from(list(base)), max_size=2)
    return st.builds(
        lambda c, d: {k: v for k, v in {**base, **c}.items() if k not in d}, changed, dropped
    )


def outcome(call: Any, *args: Any) -> Any:
    """What a call returns, with the order of the item's attributes, or the refusal it words."""
    try:
        result = call(*args)
    except Exception as exc:
        return (type(exc).__name__, str(exc))
    if isinstance(result, tuple):
        item, unavailable = result
        return (list(item.items()), sorted(unavailable))
    return list(result.items())


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda m: f"{m.name}-{m.large_items}")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compiled_mapper_equals_the_mapping(mapping: TableMapping, data: st.DataObject) -> None:
    row = data.draw(rows_of(mapping))
    compiled = Mapper(mapping)
    assert compiled._compiled
    assert outcome(compiled.to_item, row) == outcome(to_item, mapping, row)
    assert outcome(compiled.item_key, row) == outcome(item_key, mapping, row)


@given(row=rows_of(LOGS))
@example(row=log_row(requestdata=BIG[0]))
@example(row=log_row(requestdata=BIG[1], responsedata=BIG[1]))
@example(row=log_row(requestdata=BIG[2]))
@settings(deadline=None)
def test_large_items_are_sized_and_compressed_alike(row: dict[str, Any]) -> None:
    for mapping in (LOGS, LOGS_DEAD_LETTER_LARGE):
        assert outcome(mapper(mapping).to_item, row) == outcome(to_item, mapping, row)


def reference_change(mapping: TableMapping, event: ChangeEvent) -> Change:
    """pipeline.to_change as written on the mapping's own functions."""
    Lookups.require(mapping, event.row)
    if event.op is Op.DELETE:
        return Change(mapping, event, item_key(mapping, event.row), None)
    item, unavailable = to_item(mapping, event.row)
    key = {name: item[name] for name in mapping.key_attributes}
    old_key = None
    keys = [a for a in (mapping.partition_key, mapping.sort_key) if a is not None]
    using = {lk.column: lk.using for lk in mapping.lookups}
    key_columns = [using.get(n, n) for a in keys for n, _ in template_fields(a.template)]
    if event.before is not None and all(name in event.before for name in key_columns):
        Lookups.require(mapping, event.before)
        before_key = item_key(mapping, event.before)
        if before_key != key:
            old_key = before_key
    return Change(mapping, event, key, item, frozenset(unavailable), old_key)


@pytest.mark.parametrize("mapping", [LOGS, PAYMENTS, NOTES], ids=lambda m: m.name)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), op=st.sampled_from([Op.UPSERT, Op.DELETE]), moved=st.booleans())
def test_to_change_equals_the_reference(
    mapping: TableMapping, data: st.DataObject, op: Op, moved: bool
) -> None:
    row = data.draw(rows_of(mapping))
    before = data.draw(st.one_of(st.none(), rows_of(mapping))) if moved else None
    event = ChangeEvent(
        table=mapping.source,
        op=op,
        key={"id": 1},
        row=row,
        before=before,
        position=Position(1, 1, 1),
        source_ts_ms=0,
        snapshot=False,
        origin=Origin("t", 0, 0),
    )

    def run(change_of: Any) -> Any:
        try:
            return change_of(mapping, event)
        except Exception as exc:
            return (type(exc).__name__, str(exc))

    assert run(to_change) == run(reference_change)


def test_mapper_is_compiled_once_per_mapping_and_again_for_a_copy() -> None:
    assert mapper(LOGS) is mapper(LOGS)
    copy = LOGS.model_copy(update={"large_items": "dead-letter"})
    assert mapper(copy) is not mapper(LOGS)
    assert mapper(copy).mapping is copy


def test_a_template_format_the_compiler_does_not_know_falls_back_to_the_mapping() -> None:
    # Validation refuses such a format; a mapping built without validation still maps alike.
    odd = LOGS.model_copy(
        update={"sort_key": LOGS.sort_key.model_copy(update={"template": "{logid:x}"})}  # type: ignore[union-attr]
    )
    compiled = Mapper(odd)
    assert not compiled._compiled
    row = log_row(logid=255)
    assert outcome(compiled.to_item, row) == outcome(to_item, odd, row)
    item = {"PK": {"S": "p"}, "SK": {"S": "s"}, "LogId": {"N": "1"}}
    assert (
        compiled.key_of(item) == Mapper(LOGS).key_of(item) == {"PK": {"S": "p"}, "SK": {"S": "s"}}
    )


INCLUDED = [Included("riskscore", "Riskscore", "decimal"), Included("tier", "Tier", "text")]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=rows_of(LOGS),
    risk=st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False).map(str)),
    tier=st.one_of(st.none(), st.text(max_size=5), st.integers()),
)
def test_included_columns_are_added_to_the_reference_item_alike(
    row: dict[str, Any], risk: str | None, tier: Any
) -> None:
    row = {**row, "riskscore": risk, "tier": tier}
    event = ChangeEvent(
        LOGS.source, Op.UPSERT, {"logid": 1}, row, None, Position(1, 1, 1), 0, False,
        Origin("t", 0, 0),
    )  # fmt: skip

    def reference() -> Any:
        item, unavailable = to_item(LOGS, row)
        extra, more = included_attributes(INCLUDED, row)
        return {**item, **extra}, unavailable | more

    def compiled() -> Any:
        change = to_change(LOGS, event, INCLUDED)
        return change.item, set(change.keep)

    assert outcome(compiled) == outcome(reference)
