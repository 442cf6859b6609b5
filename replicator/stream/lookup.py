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


class SourceQueries:
    """One autocommit connection to the source PostgreSQL for the consumer's own reads (the
    lookups, the catalog), connected again and retried by the policy when the server drops it."""

    def __init__(self, dsn: str, retry: RetryPolicy | None = None) -> None:
        self.dsn = dsn
        self.retry = retry or RetryPolicy()  # on connection errors
        self._conn: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def rows(self, query: str, params: Any, what: str) -> list[tuple[Any, ...]]:
        """``query``'s rows; LookupUnavailableError when PostgreSQL does not answer within the
        policy (the batch waits), ReplicatorError when the query itself fails. ``what`` names
        the read in both."""

        def attempt() -> list[tuple[Any, ...]]:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True)
                return [tuple(r) for r in self._conn.execute(query, params)]
            except psycopg.OperationalError:
                self._conn = None  # connect again on the next attempt
                raise

        try:
            return self.retry.call(attempt, lambda e: isinstance(e, psycopg.OperationalError))
        except psycopg.OperationalError as exc:
            raise LookupUnavailableError(f"{what}: PostgreSQL unreachable: {exc}") from exc
        except psycopg.Error as exc:
            raise ReplicatorError(f"{what}: query failed: {exc}") from exc


class Lookups:
    def __init__(
        self, dsn: str, cache_size: int = 100_000, retry: RetryPolicy | None = None
    ) -> None:
        self.source = SourceQueries(dsn, retry)
        self.cache: LRUCache[tuple[str, Any], Any] = LRUCache(maxsize=cache_size)

    @property
    def retry(self) -> RetryPolicy:
        return self.source.retry

    def close(self) -> None:
        self.source.close()

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

    def _query(self, lookup: Lookup, keys: list[Any]) -> list[tuple[Any, ...]]:
        return self.source.rows(lookup.sql, {"keys": keys}, f"lookup {lookup.column!r}")
