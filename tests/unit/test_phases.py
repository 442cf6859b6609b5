"""Phase rules and gate conditions that need no service: order, parsing, and how Connect's
answers (status, config, committed source offsets) become conditions with measured values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from replicator.cli import app
from replicator.errors import ConfigError
from replicator.ops.phases import (
    Check,
    Phase,
    captured_check,
    parse_phase,
    refusal_message,
    running_check,
    snapshot_check,
)


def test_phases_are_ordered_as_the_design_says() -> None:
    assert [p.value for p in Phase] == [
        "postgres-only",
        "dual-write",
        "hybrid-read",
        "dynamodb-only",
    ]
    assert [p.rank for p in Phase] == [0, 1, 2, 3]


def test_unknown_phase_names_the_known_ones() -> None:
    assert parse_phase("hybrid-read") is Phase.HYBRID_READ
    with pytest.raises(ConfigError, match=r"unknown phase 'hybrid'.*dual-write"):
        parse_phase("hybrid")


def _status(connector: str, *tasks: str) -> dict[str, object]:
    return {
        "connector": {"state": connector},
        "tasks": [{"id": i, "state": s} for i, s in enumerate(tasks)],
    }


def test_running_needs_the_connector_and_every_task_running() -> None:
    ok = running_check(_status("RUNNING", "RUNNING", "RUNNING"))
    assert ok.ok and ok.value == "connector RUNNING, task 0 RUNNING, task 1 RUNNING"
    failed = running_check(_status("RUNNING", "RUNNING", "FAILED"))
    assert not failed.ok and "task 1 FAILED" in failed.value
    paused = running_check(_status("PAUSED", "PAUSED"))
    assert not paused.ok and "connector PAUSED" in paused.value
    no_tasks = running_check(_status("RUNNING"))
    assert not no_tasks.ok and "no tasks" in no_tasks.value


def test_captured_matches_the_include_list_as_debezium_does() -> None:
    config = {"table.include.list": "dbo.integrationlogs, dbo.pay.*"}
    assert captured_check(config, "dbo.integrationlogs").ok
    assert captured_check(config, "dbo.payments").ok
    missing = captured_check(config, "dbo.loans")
    assert not missing.ok
    assert missing.value == "table.include.list=dbo.integrationlogs,dbo.pay.*"
    assert missing.threshold == "includes dbo.loans"
    # A prefix is not a match: Debezium matches the whole schema.table.
    assert not captured_check({"table.include.list": "dbo.pay"}, "dbo.payments").ok
    assert captured_check({}, "dbo.anything").ok  # no include list: every table


def _offsets(**offset: object) -> list[dict[str, object]]:
    return [{"partition": {"server": "loans"}, "offset": offset}]


def test_snapshot_complete_reads_debeziums_committed_offset() -> None:
    none = snapshot_check([], "dbo.payments")
    assert not none.ok and "no source offset" in none.value
    old_connect = snapshot_check(None, "dbo.payments")  # no offsets endpoint: cannot know
    assert not old_connect.ok and old_connect.value.startswith("unknown:")
    running = snapshot_check(
        _offsets(snapshot="INITIAL", last_snapshot_record=False, lsn=10), "dbo.payments"
    )
    assert not running.ok and "initial snapshot in progress (INITIAL)" in running.value
    legacy = snapshot_check(_offsets(snapshot=True, last_snapshot_record=False), "dbo.payments")
    assert not legacy.ok
    streaming = snapshot_check(
        _offsets(lsn_proc=26637472, lsn_commit=26637472, lsn=26637472, txId=750), "dbo.payments"
    )
    assert streaming.ok and streaming.value == "streaming (lsn 26637472)"


def test_an_incremental_snapshot_of_the_table_is_not_complete() -> None:
    collections = json.dumps(
        [
            {
                "incremental_snapshot_collections_id": "dbo.payments",
                "incremental_snapshot_collections_additional_condition": None,
            }
        ]
    )
    offsets = _offsets(lsn=5, incremental_snapshot_collections=collections)
    busy = snapshot_check(offsets, "dbo.payments")
    assert not busy.ok and "incremental snapshot of dbo.payments in progress" in busy.value
    assert snapshot_check(offsets, "dbo.integrationlogs").ok  # another table's backfill


def test_refusal_message_names_each_failed_condition_with_its_value() -> None:
    checks = [
        Check(Phase.DUAL_WRITE, "connector running", True, "connector RUNNING", "RUNNING"),
        Check(Phase.HYBRID_READ, "consumer lag", False, "75.0 s (12 events)", "<= 30 s"),
        Check(Phase.HYBRID_READ, "clean verify", False, "no full verify recorded", "within 24 h"),
    ]
    text = refusal_message("Payments", Phase.DUAL_WRITE, Phase.HYBRID_READ, checks)
    assert text.splitlines() == [
        "Payments: dual-write -> hybrid-read refused",
        "  consumer lag: 75.0 s (12 events) (needs <= 30 s)",
        "  clean verify: no full verify recorded (needs within 24 h)",
    ]
    skip = refusal_message("Payments", Phase.POSTGRES_ONLY, Phase.HYBRID_READ, [])
    assert "one at a time: postgres-only -> dual-write first" in skip


def test_cli_set_needs_a_reason_and_a_known_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("REPLICATOR_"):
            monkeypatch.delenv(name)
    runner = CliRunner()
    missing_why = runner.invoke(app, ["phase", "set", "Payments", "dual-write"])
    assert missing_why.exit_code == 1 and "needs a reason: --why" in missing_why.output
    bogus = runner.invoke(app, ["phase", "set", "Payments", "halfway", "--why", "x"])
    assert bogus.exit_code == 1 and "unknown phase 'halfway'" in bogus.output
    assert bogus.exception is None or isinstance(bogus.exception, SystemExit)
