"""Enrichment lookups: columns a mapping adds from other PostgreSQL tables (I/O at the edge).

Payments' CustomerId comes from loans.applicationid -> applications.customerid. That relation
never changes, so answers are cached in a bounded LRU cache; one query serves a whole batch.
"""

from __future__ import annotations

from typing import Any

import psycopg
from cachetools import LRUCache

from replicator.core.mapping import Lookup, TableMapping
from replicator.errors import LookupMissError, LookupUnavailableError, ReplicatorError
from replicator.stream.retry import RetryPolicy


class Lookups:
    def __init__(
        self, dsn: str, cache_size: int = 100_000, retry: RetryPolicy | None = None
    ) -> None:
        self.dsn = dsn
        self.retry = retry or RetryPolicy()  # on connection errors
        self.cache: LRUCache[tuple[str, Any], Any] = LRUCache(maxsize=cache_size)
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def fill(self, mapping: TableMapping, rows: list[dict[str, Any]]) -> None:
        """Add each lookup column to each row in place. A row whose value is not found gets
        no column; ``require`` raises for it when the item is built."""
        for lookup in mapping.lookups:
            wanted = {row[lookup.using] for row in rows if row.get(lookup.using) is not None}
            missing = [v for v in wanted if (lookup.sql, v) not in self.cache]
            if missing:
                for key, value in self._query(lookup, missing):
                    self.cache[(lookup.sql, key)] = value
            for row in rows:
                using = row.get(lookup.using)
                if using is not None and (lookup.sql, using) in self.cache:
                    row[lookup.column] = self.cache[(lookup.sql, using)]

    @staticmethod
    def require(mapping: TableMapping, row: dict[str, Any]) -> None:
        for lookup in mapping.lookups:
            if row.get(lookup.column) is None:
                raise LookupMissError(
                    f"lookup {lookup.column!r}: no row for {lookup.using}={row.get(lookup.using)!r}"
                )

    def _query(self, lookup: Lookup, keys: list[Any]) -> list[tuple[Any, Any]]:
        def attempt() -> list[tuple[Any, Any]]:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True)
                return [tuple(r) for r in self._conn.execute(lookup.sql, {"keys": keys})]
            except psycopg.OperationalError:
                self._conn = None  # connect again on the next attempt
                raise

        try:
            return self.retry.call(attempt, lambda e: isinstance(e, psycopg.OperationalError))
        except psycopg.OperationalError as exc:
            raise LookupUnavailableError(
                f"lookup {lookup.column!r}: PostgreSQL unreachable: {exc}"
            ) from exc
        except psycopg.Error as exc:
            raise ReplicatorError(f"lookup {lookup.column!r} query failed: {exc}") from exc
