"""The declared patterns as SQL on the source tables: each row becomes an item through the
mapping, exactly as the pipeline builds it, and then a row (see ``reads.rows``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from replicator.config import Settings
from replicator.core.mapping import TableMapping, render, to_item
from replicator.errors import MappingError
from replicator.reads.patterns import (
    POSTGRES,
    Pattern,
    PatternReads,
    Query,
    Store,
    StoreError,
    timestamp_value,
)
from replicator.reads.rows import Page, Row
from replicator.stream.rows import source_row

log = structlog.get_logger("replicator.reads.postgres")


def _sql_value(kind: str, text: Any) -> Any:
    """A parameter's normalized text as the value PostgreSQL compares the column with."""
    if kind == "timestamp":
        return timestamp_value(text)
    if kind == "date":
        return dt.date.fromisoformat(text)
    return text


class PostgresReads(PatternReads):
    store: Store = POSTGRES

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        reads = settings.reads
        dsn = reads.postgres_dsn.get_secret_value() if reads.postgres_dsn else None
        # Connections are made in the background: a PostgreSQL outage fails reads, not start-up.
        self.pool = ConnectionPool(
            dsn or settings.postgres.dsn(),
            min_size=1,
            max_size=reads.postgres_pool_size,
            kwargs={"autocommit": True},
            open=False,
            name="reads",
            timeout=5.0,
            reconnect_timeout=0,
        )
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    @staticmethod
    def _from(mapping: TableMapping) -> sql.Composable:
        """The table's rows, with their lookup columns when the mapping says how to join."""
        if mapping.reads.postgres_rows:
            return sql.SQL("SELECT * FROM ({}) AS r").format(sql.SQL(mapping.reads.postgres_rows))
        return sql.SQL("SELECT * FROM {}").format(sql.Identifier(*mapping.source.split(".")))

    def _fetch(self, query: sql.Composable, params: list[Any]) -> list[dict[str, Any]]:
        for attempt in (1, 2):  # once more on a fresh connection after a server restart
            try:
                with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                    return cur.execute(query, params).fetchall()
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise StoreError(POSTGRES, str(exc).strip()) from exc
            except PoolTimeout as exc:
                raise StoreError(POSTGRES, f"no connection within 5 s: {exc}") from exc
            except psycopg.Error as exc:
                raise StoreError(POSTGRES, str(exc).strip()) from exc
        raise AssertionError("unreachable")

    def _rows(self, p: Pattern, records: list[dict[str, Any]]) -> list[tuple[str, Row]]:
        """(order key, row) of each record; rows the pipeline cannot map are left out."""
        rows = []
        for record in records:
            try:
                item, _ = to_item(p.mapping, source_row(record))
            except MappingError as exc:
                # The pipeline dead-letters such a row: DynamoDB does not have it either.
                log.warning("row not mappable, left out", table=p.table, error=str(exc))
                continue
            row = p.shape.row(item)
            if row is not None:
                rows.append((item[p.order]["S"] if p.order else "", row))
        return rows

    def _where(self, p: Pattern, q: Query) -> tuple[list[sql.Composable], list[Any]]:
        cond: list[sql.Composable] = []
        params: list[Any] = []
        column = sql.Identifier(p.decl.param.column)
        if p.decl.param.day:  # the day of a timestamp column
            day = dt.date.fromisoformat(q.value)
            cond.append(sql.SQL("{c} >= %s AND {c} < %s").format(c=column))
            params += [day, day + dt.timedelta(days=1)]
        else:
            cond.append(sql.SQL("{} = %s").format(column))
            params.append(_sql_value(p.param_type, q.value))
        for name, value in p.decl.filters.items():
            cond.append(sql.SQL("{} = %s").format(sql.Identifier(name)))
            params.append(value)
        if p.decl.range is not None:
            ranged = sql.Identifier(p.decl.range.column)
            if q.start:
                cond.append(sql.SQL("{} >= %s").format(ranged))
                params.append(_sql_value(p.range_type or "", q.start))
            if q.end:
                # Timestamps [start, end), dates [start, end].
                op = "<" if p.range_type == "timestamp" else "<="
                cond.append(sql.SQL("{} " + op + " %s").format(ranged))
                params.append(_sql_value(p.range_type or "", q.end))
        return cond, params

    def _list(self, p: Pattern, q: Query) -> Page:
        assert p.sort_key is not None and p.order is not None
        where, params = self._where(p, q)
        columns = [sql.Identifier(name) for name, _ in p.sort_key.columns]
        order = sql.SQL("ORDER BY {}").format(
            sql.SQL(", ").join(sql.SQL("{} DESC").format(c) for c in columns)
        )
        after_sql = sql.SQL("({}) < ({})").format(
            sql.SQL(", ").join(columns), sql.SQL(", ").join(sql.Placeholder() * len(columns))
        )
        types = p.mapping.column_types()
        rows: list[tuple[str, Row]] = []
        after = q.after
        while True:
            conditions, values = list(where), list(params)
            if after is not None:
                conditions.append(after_sql)
                values += p.sort_key.values(after) or []
            query = sql.SQL("{base} WHERE {where} {order} LIMIT %s").format(
                base=self._from(p.mapping), where=sql.SQL(" AND ").join(conditions), order=order
            )
            want = q.limit + 1 - len(rows)
            records = self._fetch(query, [*values, want])
            rows += self._rows(p, records)
            if len(records) < want or len(rows) > q.limit:
                break
            # Some rows could not be mapped (left out): read on past the last one.
            after = render(p.sort_key.template, source_row(records[-1]), types)
        return self._page(p, q, rows[: q.limit], len(rows) > q.limit)

    def _one(self, p: Pattern, value: Any) -> Row | None:
        query = sql.SQL("{base} WHERE {c} = %s").format(
            base=self._from(p.mapping), c=sql.Identifier(p.decl.param.column)
        )
        rows = self._rows(p, self._fetch(query, [value]))
        return rows[0][1] if rows else None
