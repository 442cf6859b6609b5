"""Source schema changes as the consumer sees them: columns added that the mapping does not
name, mapped columns dropped, column types the mapping no longer fits.

Each table's current shape (replicator.core.schema.Shape) is that of its newest event: events
of one table arrive on several partitions, so an older row (from before an ALTER) can arrive
after a newer one and must not count as the column going away again. A change of shape is
logged once per column and shown by the gauges ``replicator_unmapped_columns`` and
``replicator_missing_columns`` (1 while present; the series is removed when the column is
gone, so a column dropped and added again is reported again). Unmapped columns' types come from
PostgreSQL's catalog (I/O at the edge), asked when a column is first seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from replicator.core.events import ChangeEvent, Position
from replicator.core.mapping import TableMapping
from replicator.core.schema import (
    Included,
    Shape,
    compatible,
    plan_included,
    required,
    shape,
)
from replicator.errors import MappingError, ReplicatorError
from replicator.observe.metrics import Metrics
from replicator.stream.lookup import SourceQueries
from replicator.stream.retry import RetryPolicy

log = structlog.get_logger("replicator.stream.schema")

ColumnTypes = dict[str, str]  # column -> PostgreSQL type (format_type)

_COLUMNS_SQL = """
select a.attname, format_type(a.atttypid, a.atttypmod)
from pg_attribute a
where a.attrelid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped
"""


class SchemaError(MappingError):
    """The row no longer fits the mapping's schema (a NOT NULL column missing, a column type
    changed): the event is dead-lettered with reason ``schema``."""


class Catalog:
    """The source tables' column types from pg_attribute (readable by any role)."""

    def __init__(self, dsn: str, retry: RetryPolicy | None = None) -> None:
        self.source = SourceQueries(dsn, retry)

    def close(self) -> None:
        self.source.close()

    def columns(self, table: str) -> ColumnTypes:
        """``schema.table``'s columns and types now; LookupUnavailableError when PostgreSQL
        does not answer (the batch waits, as for a lookup)."""
        rows = self.source.rows(_COLUMNS_SQL, [table], f"column types of {table}")
        return {name: kind for name, kind in rows}


@dataclass
class _Table:
    """One table's current shape, from its newest event seen."""

    keys: frozenset[str]  # the row keys of that shape: the per-event check is one comparison
    shape: Shape
    position: Position | None
    included: list[Included]
    required_missing: list[str]
    left_out: dict[str, str] = field(default_factory=dict)


_NOTHING: list[Included] = []
_ABSENT_S = 30.0


class SchemaWatch:
    """The per-event check: ``check`` returns the unmapped columns to write (``include``) or
    raises SchemaError; ``explain`` names changed column types in a MappingError's reason."""

    def __init__(
        self,
        catalog: Callable[[str], ColumnTypes] | None,
        metrics: Metrics,
        explain_every_s: float = 5.0,
    ) -> None:
        # None: no catalog (types unknown, unmapped columns reported and never written).
        self.catalog = catalog
        self.metrics = metrics
        self.explain_every_s = explain_every_s
        self._tables: dict[str, _Table] = {}
        self._types: dict[str, ColumnTypes] = {}  # table -> catalog answer last asked
        self._asked: dict[str, float] = {}  # table -> when (monotonic)
        self._absent: dict[str, tuple[float, frozenset[str]]] = {}  # not in the catalog, when

    def check(self, mapping: TableMapping, event: ChangeEvent) -> list[Included]:
        """For an insert's, update's or read's full row (a delete's old row may hold only the
        key: it is not checked)."""
        state = self._tables.get(mapping.name)
        if state is not None and event.row.keys() == state.keys:
            if state.required_missing:
                raise self._required(mapping, state.required_missing)
            return state.included
        return self._changed(mapping, event, state)

    def _changed(
        self, mapping: TableMapping, event: ChangeEvent, state: _Table | None
    ) -> list[Included]:
        now = shape(mapping, event.row)
        included, left_out = self._plan(mapping, now)
        missing = required(mapping, now.missing)
        newer = state is None or state.position is None or event.position > state.position
        if newer:
            old = state.shape if state is not None else Shape((), ())
            self._tables[mapping.name] = _Table(
                frozenset(event.row.keys()), now, event.position, included, missing, left_out
            )
            self._report(mapping, old, now, included, left_out)
        if missing:
            raise self._required(mapping, missing)
        return included

    def _plan(self, mapping: TableMapping, now: Shape) -> tuple[list[Included], dict[str, str]]:
        """Which unknown columns are written (``unmapped_columns: include``), by type."""
        if not now.unknown:
            return _NOTHING, {}
        types = self._types.get(mapping.source, {})
        absent_at, absent = self._absent.get(mapping.source, (float("-inf"), frozenset()))
        unknown = {c for c in now.unknown if c not in types}
        # A column of the row that the catalog lacks was dropped since (the row is older than
        # the answer): asking again for it at every event would not bring it back.
        recently = time.monotonic() - absent_at < _ABSENT_S
        if self.catalog is not None and unknown and not (recently and unknown <= absent):
            try:
                types = self._ask(mapping.source)
            except ReplicatorError:
                if mapping.unmapped_columns == "include":
                    raise  # LookupUnavailableError: the batch waits, as for a lookup
                # Only reported: the warning goes without the type.
            self._absent[mapping.source] = (
                time.monotonic(),
                frozenset(c for c in now.unknown if c not in types),
            )
        if mapping.unmapped_columns != "include":
            return _NOTHING, {}
        return plan_included(mapping, {c: types.get(c) for c in now.unknown})

    def _ask(self, table: str) -> ColumnTypes:
        assert self.catalog is not None
        types = self._types[table] = self.catalog(table)
        self._asked[table] = time.monotonic()
        return types

    def _report(
        self,
        mapping: TableMapping,
        old: Shape,
        now: Shape,
        included: list[Included],
        left_out: dict[str, str],
    ) -> None:
        table = mapping.name
        written = {i.column: i for i in included}
        types = self._types.get(mapping.source, {})
        for column in now.unknown:
            if column in old.unknown:
                continue
            self.metrics.schema_column("unmapped", table, column, True)
            if column in written:
                outcome = f"written as {written[column].attribute} ({written[column].type})"
            elif mapping.unmapped_columns == "include":
                outcome = f"not written: {left_out.get(column, 'unknown type')}"
            else:
                outcome = "not written (unmapped_columns: ignore)"
            log.warning(
                "source column not in the mapping",
                table=table,
                source=mapping.source,
                column=column,
                type=types.get(column),
                outcome=outcome,
            )
        for column in old.unknown:
            if column not in now.unknown:
                self.metrics.schema_column("unmapped", table, column, False)
                log.warning("unmapped source column gone", table=table, column=column)
        nullable = {c.name: c.nullable for c in mapping.columns}
        for column in now.missing:
            if column in old.missing:
                continue
            self.metrics.schema_column("missing", table, column, True)
            log.warning(
                "mapped column missing from the source rows (dropped or renamed)",
                table=table,
                source=mapping.source,
                column=column,
                outcome="attribute removed from the items written"
                if nullable.get(column, True)
                else "events dead-lettered: the mapping says NOT NULL",
            )
        for column in old.missing:
            if column not in now.missing:
                self.metrics.schema_column("missing", table, column, False)
                log.warning("mapped column back in the source rows", table=table, column=column)

    @staticmethod
    def _required(mapping: TableMapping, missing: list[str]) -> SchemaError:
        names = ", ".join(repr(c) for c in missing)
        return SchemaError(
            f"{mapping.source}: NOT NULL mapped column(s) {names} missing from the row (dropped "
            "or renamed in the source); fix the mapping (nullable: true, or the new name), "
            "then replay"
        )

    def explain(self, mapping: TableMapping, exc: MappingError) -> tuple[str, str]:
        """(reason, detail) for an event whose row the mapping refused: ``schema`` naming the
        mapped columns whose source type the mapping does not take, else ``mapping``."""
        if self.catalog is None:
            return "mapping", str(exc)
        types = self._types.get(mapping.source)
        asked = self._asked.get(mapping.source, float("-inf"))
        if types is None or time.monotonic() - asked >= self.explain_every_s:
            try:
                types = self._ask(mapping.source)
            except ReplicatorError:
                return "mapping", str(exc)
            self._replan(mapping)
        changed = [
            f"{c.name!r} is mapped as {c.type}, the source column is now {types[c.name]}"
            for c in mapping.columns
            if c.name in types and not compatible(c.type, types[c.name])
        ]
        state = self._tables.get(mapping.name)
        for i in state.included if state is not None else ():
            if i.column in types and not compatible(i.type, types[i.column]):
                changed.append(
                    f"unmapped {i.column!r} was written as {i.type}, "
                    f"the source column is now {types[i.column]}"
                )
        if not changed:
            return "mapping", str(exc)
        return "schema", f"{mapping.source}: column type changed: {'; '.join(changed)}; {exc}"

    def _replan(self, mapping: TableMapping) -> None:
        """After the catalog was asked again: included columns follow their new types."""
        state = self._tables.get(mapping.name)
        if state is not None and state.shape.unknown:
            state.included, state.left_out = self._plan(mapping, state.shape)
