"""The store of verify runs that the phase gates read: only a FULL run with zero divergence
counts as a clean verify."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
import pytest

from replicator.config import Settings
from replicator.errors import ReplicatorError
from replicator.ops.verify import (
    VerifyReport,
    last_clean_verify,
    last_full_verify,
    record_run,
    runs,
)

pytestmark = pytest.mark.stack


def test_last_clean_verify_counts_only_full_clean_runs(
    settings: Settings, pg: psycopg.Connection[Any]
) -> None:
    table = f"VerifyStore_{uuid.uuid4().hex[:8]}"
    t0 = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert last_clean_verify(settings, table) is None
    assert last_full_verify(settings, table) is None
    try:
        clean = VerifyReport(table, "full", t0, t0 + dt.timedelta(minutes=1), source_rows=5)
        record_run(settings, clean)
        assert last_clean_verify(settings, table) == t0 + dt.timedelta(minutes=1)
        # Later runs that do not count: a clean sample, a clean window, a divergent full run.
        later = t0 + dt.timedelta(hours=1)
        record_run(settings, VerifyReport(table, "sample", later, later))
        record_run(settings, VerifyReport(table, "window", later, later))
        dirty = VerifyReport(table, "full", later, later + dt.timedelta(minutes=2), missing=1)
        record_run(settings, dirty)
        assert last_clean_verify(settings, table) == t0 + dt.timedelta(minutes=1)
        latest = last_full_verify(settings, table)
        assert latest is not None and not latest.clean and latest.divergent == 1
        assert [r.scope for r in runs(settings, table)] == ["full", "window", "sample", "full"]
        # Another table's clean run is not this table's.
        assert last_clean_verify(settings, table + "_other") is None
    finally:
        pg.execute(
            psycopg.sql.SQL("DELETE FROM {}.verify_runs WHERE table_name LIKE %s").format(
                psycopg.sql.Identifier(settings.control.schema_name)
            ),
            (table + "%",),
        )


def test_unfinished_run_is_refused(settings: Settings) -> None:
    with pytest.raises(ReplicatorError, match="once it has finished"):
        record_run(settings, VerifyReport("X", "full", dt.datetime.now(dt.UTC)))
