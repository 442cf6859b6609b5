"""Phases against the real stack: gates measured live (Connect's status and offsets, the consumer
group's lag in Kafka, verify runs and incidents in PostgreSQL) refuse with the values, --force is
recorded, rollback is immediate and ungated, concurrent changes serialize, and the SQL view shows
what applications read. Every test uses its own table names and consumer group."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from replicator.config import PhaseSettings, Settings
from replicator.core.mapping import TableMapping
from replicator.observe.lag import consumer_lag
from replicator.ops.phases import (
    Phase,
    PhaseConflict,
    PhaseRefused,
    PhaseStore,
    Transition,
)
from replicator.ops.verify import VerifyReport, record_run
from replicator.ops.workload import Workload
from tests.integration import helpers
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parents[2]
WHO = "test-phases"


@pytest.fixture
def own(
    stack: Any, settings: Settings, pg: psycopg.Connection[Any]
) -> Iterator[Callable[..., Settings]]:
    """Settings whose tables are suffixed (their own phases, history, incidents, verify runs)
    and whose consumer group is new; removes those control rows afterwards."""
    suffixes: list[str] = []

    def make(**phases: Any) -> Settings:
        suffix = f"_ph{uuid.uuid4().hex[:8]}"
        suffixes.append(suffix)
        return settings.model_copy(
            update={
                "tables": [t.model_copy(update={"name": t.name + suffix}) for t in settings.tables],
                "kafka": settings.kafka.model_copy(update={"group_id": f"test{suffix}"}),
                "phases": PhaseSettings(**phases),
            }
        )

    yield make
    schema = sql.Identifier(settings.control.schema_name)
    for suffix in suffixes:
        for table in ("phases", "phase_history", "phase_incidents", "verify_runs"):
            pg.execute(
                sql.SQL("DELETE FROM {}.{} WHERE table_name LIKE %s").format(
                    schema, sql.Identifier(table)
                ),
                (f"%{suffix}",),
            )


def logs_table(s: Settings) -> str:
    return next(t.name for t in s.tables if t.source == "dbo.integrationlogs")


def lagging(s: Settings, pg: psycopg.Connection[Any], older_than_s: float) -> None:
    """Make sure the (new) group is behind on the logs topic by a record older than that."""
    Workload(pg, seed=int(time.time())).insert_log()
    table = logs_table(s)
    wait_for(
        lambda: consumer_lag(s)[table].seconds > older_than_s,
        timeout_s=older_than_s + 30,
        interval_s=1,
        what="the new group lagging",
    )


def caught_up(s: Settings) -> None:
    """Commit the group's offsets at the end of the logs topic, as a consumer that applied
    everything would (the lag gate reads committed offsets, not any process of ours)."""
    mapping = next(t for t in s.tables if t.source == "dbo.integrationlogs")
    topic = s.topic_of(mapping)
    client = Consumer(
        {
            "bootstrap.servers": s.kafka.bootstrap_servers,
            "group.id": s.kafka.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = client.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, client.get_watermark_offsets(TopicPartition(topic, p))[1])
            for p in partitions
        ]
        client.commit(offsets=ends, asynchronous=False)
    finally:
        client.close()


def clean_verify(s: Settings, table: str, *, missing: int = 0) -> None:
    now = dt.datetime.now(dt.UTC)
    record_run(s, VerifyReport(table, "full", now - dt.timedelta(minutes=1), now, missing=missing))


def failed(exc: PhaseRefused) -> dict[str, str]:
    return {c.name: c.value for c in exc.checks if not c.ok}


def test_hybrid_read_refused_on_lag_and_verify_until_both_hold(
    own: Callable[..., Settings], pg: psycopg.Connection[Any]
) -> None:
    s = own(max_lag_s=10, verify_within_h=1)
    table = logs_table(s)
    store = PhaseStore(s)
    moved = store.set(table, Phase.DUAL_WRITE, who=WHO, why="connector is up")
    assert moved.changed and not moved.forced
    assert {c.name: c.ok for c in moved.checks} == {
        "connector running": True,
        "table captured": True,
        "snapshot complete": True,
    }

    lagging(s, pg, older_than_s=10)
    with pytest.raises(PhaseRefused) as refused:
        store.set(table, Phase.HYBRID_READ, who=WHO, why="try")
    values = failed(refused.value)
    assert set(values) == {"consumer lag", "clean verify"}
    assert "events behind on loans.dbo.integrationlogs" in values["consumer lag"]
    assert values["clean verify"] == "no full verify recorded"
    assert "consumer lag: " in str(refused.value) and "(needs <= 10 s)" in str(refused.value)
    assert store.get(table) is Phase.DUAL_WRITE  # nothing changed, nothing recorded
    assert len(store.history(table)) == 1

    clean_verify(s, table)
    clean_verify(s, table, missing=3)  # the latest full verify found divergence: not clean
    with pytest.raises(PhaseRefused) as refused:
        store.set(table, Phase.HYBRID_READ, who=WHO, why="try")
    assert failed(refused.value)["clean verify"].startswith("3 divergent keys at ")

    clean_verify(s, table)
    with pytest.raises(PhaseRefused) as refused:
        store.set(table, Phase.HYBRID_READ, who=WHO, why="try")
    assert set(failed(refused.value)) == {"consumer lag"}

    caught_up(s)
    moved = store.set(table, Phase.HYBRID_READ, who=WHO, why="lag low, verified")
    assert moved.changed and not moved.forced and all(c.ok for c in moved.checks)
    assert store.get(table) is Phase.HYBRID_READ
    store.close()


def test_dynamodb_only_needs_no_incidents_and_a_soak_in_hybrid_read(
    own: Callable[..., Settings],
) -> None:
    s = own(max_lag_s=30, verify_within_h=1, incident_window_h=2 / 3600)  # a 2-second window
    table = logs_table(s)
    caught_up(s)
    clean_verify(s, table)
    store = PhaseStore(s)

    with pytest.raises(PhaseRefused, match="one at a time") as skipped:
        store.set(table, Phase.HYBRID_READ, who=WHO, why="skip dual-write")
    assert all(c.ok for c in skipped.value.checks)  # every gate holds; skipping alone refuses

    store.set(table, Phase.DUAL_WRITE, who=WHO, why="step 1")
    store.set(table, Phase.HYBRID_READ, who=WHO, why="step 2")
    with pytest.raises(PhaseRefused) as early:
        store.set(table, Phase.DYNAMODB_ONLY, who=WHO, why="too soon")
    assert set(failed(early.value)) == {"hybrid-read soak"}
    time.sleep(2.5)
    done = store.set(table, Phase.DYNAMODB_ONLY, who=WHO, why="soaked, no incidents")
    assert done.changed and not done.forced
    assert {c.name for c in done.checks} >= {"fallbacks", "shadow mismatches", "hybrid-read soak"}

    # Incidents recorded by a reader (here: for the other table) refuse its move, with counts.
    other = next(t.name for t in s.tables if t.name != table)
    store.set(other, Phase.DUAL_WRITE, who=WHO, why="x", force=True)
    store.set(other, Phase.HYBRID_READ, who=WHO, why="x", force=True)
    # Incidents are counted per minute, and the gate counts the minute its window starts in:
    # recorded in one minute and checked 2.5 s into the next with a 2 s window, they would
    # fall out of it. Record early in a minute.
    second = dt.datetime.now(dt.UTC).second
    if second >= 50:
        time.sleep(60.5 - second)
    store.record_incidents(other, "fallback", 2)
    store.record_incidents(other, "fallback", 1)
    store.record_incidents(other, "mismatch", 1)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    assert store.incidents(other, "fallback", since) == 3
    assert store.incidents(table, "fallback", since) == 0
    time.sleep(2.5)
    with pytest.raises(PhaseRefused) as refused:
        store.set(other, Phase.DYNAMODB_ONLY, who=WHO, why="x")
    values = failed(refused.value)
    assert values["fallbacks"] == "3" and values["shadow mismatches"] == "1"
    store.close()


def test_force_moves_and_records_the_failed_conditions_and_rollback_is_immediate(
    own: Callable[..., Settings], pg: psycopg.Connection[Any], settings: Settings
) -> None:
    s = own(max_lag_s=10)
    table = logs_table(s)
    lagging(s, pg, older_than_s=10)  # and no verify: hybrid-read's gates fail
    store, reader = PhaseStore(s), PhaseStore(s)  # reader: another application
    assert reader.get(table) is Phase.POSTGRES_ONLY
    store.set(table, Phase.DUAL_WRITE, who=WHO, why="connector up")
    forced = store.set(
        table, Phase.HYBRID_READ, who="alice", why="incident drill, lag known", force=True
    )
    assert forced.changed and forced.forced
    entry = store.history(table)[-1]
    assert (entry.from_phase, entry.to_phase, entry.who, entry.forced) == (
        Phase.DUAL_WRITE,
        Phase.HYBRID_READ,
        "alice",
        True,
    )
    assert entry.why == "incident drill, lag known"
    recorded = {c["name"]: c for c in entry.checks}
    assert (
        not recorded["consumer lag"]["ok"] and "events behind" in recorded["consumer lag"]["value"]
    )
    assert recorded["clean verify"] == {
        "gate": "hybrid-read",
        "name": "clean verify",
        "ok": False,
        "value": "no full verify recorded",
        "threshold": "latest full verify clean, within 24 h",
    }
    skipped = store.set(table, Phase.DYNAMODB_ONLY, who="alice", why="skip soak", force=True)
    assert skipped.forced
    assert reader.get(table) is Phase.DYNAMODB_ONLY

    # Rollback: gates still fail, and it goes through at once, ungated, for every reader.
    started = time.monotonic()
    back = store.set(table, Phase.POSTGRES_ONLY, who="bob", why="DynamoDB throttling")
    took = time.monotonic() - started
    assert back.changed and back.rollback and not back.forced and back.checks == []
    assert took < 1.0, f"rollback took {took:.2f}s"
    assert reader.get(table) is Phase.POSTGRES_ONLY
    view = pg.execute(
        sql.SQL(
            "SELECT phase, changed_by, why FROM {}.current_phases WHERE table_name = %s"
        ).format(sql.Identifier(s.control.schema_name)),
        (table,),
    ).fetchone()
    assert view == ("postgres-only", "bob", "DynamoDB throttling")
    assert [(e.from_phase.value, e.to_phase.value, e.forced) for e in store.history(table)] == [
        ("postgres-only", "dual-write", False),
        ("dual-write", "hybrid-read", True),
        ("hybrid-read", "dynamodb-only", True),
        ("dynamodb-only", "postgres-only", False),
    ]
    store.close()
    reader.close()


def test_dual_write_refuses_a_missing_connector_and_an_uncaptured_table(
    own: Callable[..., Settings],
) -> None:
    base = own()
    gone = base.model_copy(
        update={"connector": base.connector.model_copy(update={"name": "no-such-connector"})}
    )
    store = PhaseStore(gone)
    table = logs_table(gone)
    with pytest.raises(PhaseRefused) as refused:
        store.set(table, Phase.DUAL_WRITE, who=WHO, why="x")
    assert failed(refused.value) == {"connector running": "no-such-connector does not exist"}
    store.close()

    loans = TableMapping.model_validate(
        {
            "name": f"Loans{base.tables[0].name[-11:]}",
            "source": "dbo.loans",
            "primary_key": ["loanid"],
            "partition_key": {"attribute": "LoanId", "type": "N", "template": "{loanid}"},
            "columns": [{"name": "loanid", "attribute": "LoanId", "type": "int"}],
        }
    )
    with_loans = base.model_copy(update={"tables": [*base.tables, loans]})
    store = PhaseStore(with_loans)
    with pytest.raises(PhaseRefused) as refused:
        store.set(loans.name, Phase.DUAL_WRITE, who=WHO, why="x")
    values = failed(refused.value)
    assert set(values) == {"table captured"}
    assert values["table captured"].startswith("table.include.list=")
    assert "dbo.integrationlogs" in values["table captured"]
    store.close()


def test_a_change_waits_for_the_row_lock_and_refuses_if_the_phase_moved_meanwhile(
    own: Callable[..., Settings], pg: psycopg.Connection[Any]
) -> None:
    s = own()
    table = logs_table(s)
    store = PhaseStore(s)
    store.set(table, Phase.HYBRID_READ, who=WHO, why="setup", force=True)
    schema = sql.Identifier(s.control.schema_name)
    outcome: list[Any] = []
    with psycopg.connect(s.control_dsn()) as other:  # another operator's open transaction
        other.execute(
            sql.SQL("SELECT phase FROM {}.phases WHERE table_name = %s FOR UPDATE").format(schema),
            (table,),
        )

        def rollback() -> None:
            try:
                outcome.append(store.set(table, Phase.POSTGRES_ONLY, who=WHO, why="rollback"))
            except Exception as exc:
                outcome.append(exc)

        worker = threading.Thread(target=rollback)
        worker.start()
        time.sleep(1.0)
        assert worker.is_alive() and not outcome, "the change did not wait for the row lock"
        other.execute(
            sql.SQL("UPDATE {}.phases SET phase = 'dual-write' WHERE table_name = %s").format(
                schema
            ),
            (table,),
        )
        other.commit()
    worker.join(15)
    assert len(outcome) == 1 and isinstance(outcome[0], PhaseConflict)
    assert "moved from hybrid-read to dual-write" in str(outcome[0])
    assert store.get(table) is Phase.DUAL_WRITE
    assert [e.to_phase for e in store.history(table)] == [Phase.HYBRID_READ]  # nothing written
    store.close()


def test_concurrent_sets_serialize_into_one_chain_of_changes(own: Callable[..., Settings]) -> None:
    s = own()
    table = logs_table(s)
    PhaseStore(s).set(table, Phase.DYNAMODB_ONLY, who=WHO, why="setup", force=True)
    targets = [Phase.POSTGRES_ONLY, Phase.DUAL_WRITE, Phase.HYBRID_READ] * 3
    barrier = threading.Barrier(len(targets))
    outcomes: list[Any] = [None] * len(targets)

    def change(i: int) -> None:
        store = PhaseStore(s)  # one per "process": no shared connection
        store.get(table)  # connected and schema ensured before the race
        barrier.wait()
        try:
            outcomes[i] = store.set(table, targets[i], who=f"op{i}", why="race")
        except (PhaseConflict, PhaseRefused) as exc:
            outcomes[i] = exc
        finally:
            store.close()

    threads = [threading.Thread(target=change, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(o is not None for o in outcomes)
    unexpected = [
        o
        for o in outcomes
        if isinstance(o, Exception) and not isinstance(o, (PhaseConflict, PhaseRefused))
    ]
    assert not unexpected
    changes = [o for o in outcomes if isinstance(o, Transition) and o.changed]
    assert changes, "no change went through"
    store = PhaseStore(s)
    history = store.history(table)[1:]  # after the setup move
    assert len(history) == len(changes)
    chain = [Phase.DYNAMODB_ONLY]
    for entry in history:  # each change starts where the previous one ended
        assert entry.from_phase == chain[-1]
        chain.append(entry.to_phase)
    assert store.get(table) == chain[-1]
    store.close()


def test_view_lists_every_mapped_table_for_other_languages(
    own: Callable[..., Settings], pg: psycopg.Connection[Any]
) -> None:
    s = own()
    store = PhaseStore(s)
    payments = next(t.name for t in s.tables if t.source == "dbo.payments")
    store.set(payments, Phase.HYBRID_READ, who="carol", why="view test", force=True)
    rows = pg.execute(
        sql.SQL(
            "SELECT table_name, phase, reads_from, changed_by, forced FROM {}.current_phases "
            "WHERE table_name = ANY(%s) ORDER BY table_name"
        ).format(sql.Identifier(s.control.schema_name)),
        ([t.name for t in s.tables],),
    ).fetchall()
    assert rows == [
        (logs_table(s), "postgres-only", "postgres", None, False),  # never set: listed anyway
        (payments, "hybrid-read", "dynamodb, falling back to postgres", "carol", True),
    ]
    assert store.current() == {logs_table(s): Phase.POSTGRES_ONLY, payments: Phase.HYBRID_READ}
    store.close()


def test_cli_refusal_names_each_condition_and_force_is_in_the_history(
    consumer_factory: Any, pg: psycopg.Connection[Any], settings: Settings
) -> None:
    suffix = f"_phc{uuid.uuid4().hex[:6]}"

    def phases(data: dict[str, Any]) -> None:
        data["phases"] = {"max_lag_s": 5, "verify_within_h": 1}

    consumer, s = consumer_factory(suffix, change=phases)
    table = logs_table(s)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return helpers.cli(consumer.config, "phase", *args, timeout=120)

    try:
        lagging(s, pg, older_than_s=5)
        assert cli("set", table, "dual-write", "--why", "connector up").returncode == 0
        refused = cli("set", table, "hybrid-read", "--why", "try")
        assert refused.returncode == 1
        assert "Traceback" not in refused.stderr
        lines = refused.stderr.splitlines()
        assert any(
            line.strip().startswith("consumer lag: ")
            and "events behind" in line
            and "(needs <= 5 s)" in line
            for line in lines
        ), refused.stderr
        assert (
            "  clean verify: no full verify recorded (needs latest full verify clean, within 1 h)"
            in lines
        )
        assert "2 of 5 condition(s) failed; nothing changed" in refused.stderr
        assert "FAILED" in refused.stdout  # the table of every condition

        forced = cli("set", table, "hybrid-read", "--why", "drill", "--force", "--who", "dave")
        assert forced.returncode == 0, forced.stderr
        history = json.loads(cli("history", table, "--json").stdout)
        assert [(h["from_phase"], h["to_phase"], h["forced"]) for h in history] == [
            ("postgres-only", "dual-write", False),
            ("dual-write", "hybrid-read", True),
        ]
        assert history[0]["who"] == getpass.getuser()  # --who defaults to the OS user
        assert history[1]["who"] == "dave" and history[1]["why"] == "drill"
        assert {c["name"] for c in history[1]["checks"] if not c["ok"]} == {
            "consumer lag",
            "clean verify",
        }
        back = cli("rollback", table, "--why", "undo")
        assert back.returncode == 0 and "rolled back hybrid-read -> dual-write" in back.stderr
        shown = {r["table_name"]: r["phase"] for r in json.loads(cli("show", "--json").stdout)}
        assert shown[table] == "dual-write"
        wrong = cli("rollback", table, "--to", "dynamodb-only", "--why", "x")
        assert wrong.returncode == 1 and "rollback goes to an earlier phase" in wrong.stderr
    finally:
        schema = sql.Identifier(s.control.schema_name)
        for name in ("phases", "phase_history"):
            pg.execute(
                sql.SQL("DELETE FROM {}.{} WHERE table_name LIKE %s").format(
                    schema, sql.Identifier(name)
                ),
                (f"%{suffix}",),
            )
