"""The read path on the real stack: every access pattern gives identical results from PostgreSQL
and from DynamoDB (rows, order, types, values, cursors) on realistic replicated data; results
agree with an independent oracle; hybrid-read falls back while DynamoDB is down; phase changes
apply within reads.cache_s under concurrent readers; shadow reads record mismatches."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from replicator.ops.phases import PhaseStore
from replicator.reads.dynamo import DynamoReads
from replicator.reads.patterns import QueryError, StoreError
from replicator.reads.postgres import PostgresReads
from replicator.reads.router import ReadPath
from replicator.reads.rows import Page
from tests.integration.helpers import wait_for
from tests.integration.reads_data import (  # noqa: F401 (reads_world is a fixture)
    ReadsWorld,
    closed_port,
    reads_world,
    with_dead_dynamodb,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stores(reads_world: ReadsWorld) -> Any:  # noqa: F811
    postgres, dynamo = PostgresReads(reads_world.settings), DynamoReads(reads_world.settings)
    yield postgres, dynamo
    postgres.close()


def _ts(day: dt.date, hour: int = 0, minute: int = 0, offset: str = "Z") -> str:
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00{offset}"


def list_cases(w: ReadsWorld) -> list[tuple[str, tuple[Any, ...], int]]:
    """(pattern, arguments, page size): small pages, so that most cases take several."""
    d, a, b = w.log_days, w.customers[0], w.customers[1]
    after_last = (d[-1] + dt.timedelta(days=2)).isoformat()
    s, e = w.pay_start, w.pay_end
    mid = s + dt.timedelta(days=20)
    week = dt.timedelta(days=6)
    return [
        ("logs_by_application", (w.apps[0],), 7),
        ("logs_by_application", (w.apps[3],), 50),
        ("logs_by_application", (w.apps[2] + 1,), 5),  # nothing there
        ("logs_by_service", (w.services[0], d[0].isoformat(), after_last), 9),
        ("logs_by_service", (w.services[1], _ts(d[1], 13, 30), _ts(d[4], 6, 15)), 6),
        ("logs_by_service", (w.services[2], d[2].isoformat(), d[3].isoformat()), 50),
        ("logs_by_service", (w.services[3], _ts(d[5], 3, 0, "+02:00"), _ts(d[6], 23)), 4),
        ("logs_by_correlation", (w.correlations[0],), 3),
        ("logs_by_correlation", (w.correlations[7],), 50),
        *[("failures_of_day", (day.isoformat(),), 5) for day in d[::2]],
        ("payments_by_customer", (a,), 11),
        ("payments_by_customer", (a, mid.isoformat(), (mid + dt.timedelta(days=9)).isoformat()), 4),
        ("payments_by_customer", (a, None, mid.isoformat()), 20),
        ("payments_by_customer", (b, mid.isoformat(), None), 50),
        *[("payments_by_loan", (loan,), 6) for loan in [*w.loans[a], *w.loans[b]]],
        *[
            ("payments_by_status", (status, s.isoformat(), e.isoformat()), 8)
            for status in ("Pending", "Completed", "Failed", "Reversed")
        ],
        ("payments_by_status", ("Completed", mid.isoformat(), mid.isoformat()), 50),
        *[
            ("payments_by_method", (method, s.isoformat(), e.isoformat()), 8)
            for method in ("ACH", "Check", "Online", "Cash")
        ],
        ("payments_by_method", ("ACH", mid.isoformat(), (mid + week).isoformat()), 3),
    ]


def all_pages(reader: Any, pattern: str, args: tuple[Any, ...], limit: int) -> list[Page]:
    pages, after = [], None
    while True:
        page = getattr(reader, pattern)(*args, limit=limit, after=after)
        pages.append(page)
        if page.next is None:
            return pages
        assert len(pages) < 200, "pagination does not end"
        after = page.next


def typed(value: Any) -> Any:
    """Values with their exact type and text: Decimal('12.5') is not Decimal('12.50') here."""
    if isinstance(value, Page):
        return [typed(r) for r in value.rows], value.next
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: (type(v).__name__, str(v)) for k, v in value.items()}
    return value


# --- an independent oracle: our rows, filtered and ordered in Python ------------------------


def oracle_logs(pg: psycopg.Connection[Any], w: ReadsWorld) -> list[tuple[Any, ...]]:
    return pg.execute(
        "SELECT logid, logtimestamp, servicename, applicationid, correlationid, issuccess "
        "FROM dbo.integrationlogs WHERE servicename = ANY(%s)",
        [w.services],
    ).fetchall()


def oracle_payments(pg: psycopg.Connection[Any], w: ReadsWorld) -> list[tuple[Any, ...]]:
    loans = {loan: c for c, ls in w.loans.items() for loan in ls}
    rows = pg.execute(
        "SELECT paymentid, paymentdate, loanid, paymentstatus, paymentmethod FROM dbo.payments "
        "WHERE loanid = ANY(%s)",
        [list(loans)],
    ).fetchall()
    return [(*r, loans[r[2]]) for r in rows]


def _utc(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def expected_ids(
    pattern: str, args: tuple[Any, ...], logs: list[tuple[Any, ...]], pays: list[tuple[Any, ...]]
) -> list[int]:
    if pattern.startswith("logs") or pattern == "failures_of_day":
        keep: Callable[[tuple[Any, ...]], bool] = {
            "logs_by_application": lambda r: r[3] == args[0],
            "logs_by_service": lambda r: r[2] == args[0] and _utc(args[1]) <= r[1] < _utc(args[2]),
            "logs_by_correlation": lambda r: r[4] == args[0],
            "failures_of_day": lambda r: not r[5] and r[1].date().isoformat() == args[0],
        }[pattern]
        chosen = sorted((r for r in logs if keep(r)), key=lambda r: (r[1], r[0]), reverse=True)
        return [r[0] for r in chosen]
    lo = dt.date.fromisoformat(args[1]) if len(args) > 1 and args[1] else dt.date.min
    hi = dt.date.fromisoformat(args[2]) if len(args) > 2 and args[2] else dt.date.max
    keep = {
        "payments_by_customer": lambda r: r[5] == args[0],
        "payments_by_loan": lambda r: r[2] == args[0],
        "payments_by_status": lambda r: r[3] == args[0],
        "payments_by_method": lambda r: r[4] == args[0],
    }[pattern]
    chosen = sorted(
        (r for r in pays if keep(r) and lo <= r[1] <= hi), key=lambda r: (r[1], r[0]), reverse=True
    )
    return [r[0] for r in chosen]


# --- identical results ----------------------------------------------------------------------


def test_every_list_pattern_is_identical_on_both_stores(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
    pg: psycopg.Connection[Any],
) -> None:
    postgres, dynamo = stores
    w = reads_world
    total = multi_page = 0
    for pattern, args, limit in list_cases(w):
        id_attribute = "LogId" if "log" in pattern or "failures" in pattern else "PaymentId"
        state: dict[str, Any] = {}

        def converged(
            pattern: str = pattern,
            args: Any = args,
            limit: int = limit,
            id_attribute: str = id_attribute,
            state: dict[str, Any] = state,
        ) -> bool:
            from_pg = all_pages(postgres, pattern, args, limit)
            from_dynamo = all_pages(dynamo, pattern, args, limit)
            want = expected_ids(pattern, args, oracle_logs(pg, w), oracle_payments(pg, w))
            got = [r[id_attribute] for p in from_pg for r in p.rows]
            state.update(pg=from_pg, dynamo=from_dynamo, want=want, got=got)
            return typed(from_pg) == typed(from_dynamo) and got == want

        try:
            wait_for(converged, 90, interval_s=0.5, what=f"{pattern}{args}")
        except AssertionError:
            pg_ids = state["got"]
            dy_ids = [r[id_attribute] for p in state["dynamo"] for r in p.rows]
            raise AssertionError(
                f"{pattern}{args}: postgres {pg_ids}\ndynamodb {dy_ids}\noracle {state['want']}"
            ) from None
        pages = state["pg"]
        # Every page but the last is full, and the last one says there is no more.
        assert all(len(p.rows) == limit for p in pages[:-1]) and pages[-1].next is None
        assert {p.source for p in pages} == {"postgres"}
        assert {p.source for p in state["dynamo"]} == {"dynamodb"}
        total += len(state["want"])
        multi_page += len(pages) > 2
    assert total > 800 and multi_page >= 12, (total, multi_page)  # the cases are not trivial


def test_single_item_patterns_are_identical(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
    dynamodb: Any,
) -> None:
    postgres, dynamo = stores
    w = reads_world
    logs = [*w.log_ids[:: len(w.log_ids) // 12], w.big_log_id, *w.deleted_log_ids[:3], 2**62]
    pays = [*w.payment_ids[::20], *w.moved_payment_ids, *w.deleted_payment_ids[:3], 2**31 - 1]
    for method, ids in (("log_by_id", logs), ("payment_by_id", pays)):
        for key in ids:
            wait_for(
                lambda m=method, k=key: (
                    typed(getattr(postgres, m)(k)) == typed(getattr(dynamo, m)(k))
                ),
                60,
                interval_s=0.5,
                what=f"{method}({key}) equal",
            )
    assert all(postgres.log_by_id(i) is None for i in w.deleted_log_ids)
    assert all(dynamo.payment_by_id(i) is None for i in w.deleted_payment_ids)
    big = dynamo.log_by_id(w.big_log_id)
    assert big is not None and big["RequestData"].startswith('{"blob": "Zo\\u00eb \\u6771')
    stored = dynamodb.get_item(
        TableName=w.logs_table, Key={"PK": {"S": big["PK"]}, "SK": {"S": big["SK"]}}
    )["Item"]
    assert "B" in stored["RequestData"] or "B" in stored["ResponseData"]  # gzipped to fit


def test_values_are_exact_and_plumbing_is_left_out(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
    pg: psycopg.Connection[Any],
) -> None:
    postgres, dynamo = stores
    w = reads_world
    rows = pg.execute(
        "SELECT paymentid, paymentamount, principalamount, paymentdate, createddate "
        "FROM dbo.payments WHERE paymentid = ANY(%s)",
        [w.payment_ids],
    ).fetchall()
    seen_trailing_zero = False
    for pid, amount, principal, date, created in rows[:60]:
        row = wait_for(lambda pid=pid: dynamo.payment_by_id(pid), 60, what=f"payment {pid}")
        assert typed(row) == typed(postgres.payment_by_id(pid))
        assert isinstance(row["PaymentAmount"], Decimal) and row["PaymentAmount"] == amount
        assert row["PrincipalAmount"] == principal
        assert row["PaymentDate"] == date.isoformat()
        assert row["CreatedDate"] == created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert row["PaymentDateId"] == f"{date.isoformat()}#{pid:010d}"
        assert isinstance(row["CustomerId"], int) and row["CustomerId"] in w.customers
        # DynamoDB keeps the value, not the scale: the read path gives the column's back.
        assert str(row["PaymentAmount"]) == str(amount) and str(amount).count(".") == 1
        seen_trailing_zero |= str(amount).endswith("0")
        for plumbing in ("_pos", "_src_ms", "_deleted", "ExpiresAt"):
            assert plumbing not in row
    assert seen_trailing_zero
    page = dynamo.logs_by_application(w.apps[0], limit=200)
    nulls = [r for r in page.rows if "CorrelationId" not in r]
    assert nulls, "some logs have a NULL correlation id: the key is absent"
    for row in page.rows:
        assert not [k for k in row if k.startswith(("GSI", "_"))]
        assert isinstance(row["IsSuccess"], bool) and isinstance(row["LogId"], int)
        assert row["SK"] == f"{row['LogTimestamp']}#{row['LogId']:019d}"


def test_a_cursor_continues_on_the_other_store(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
) -> None:
    postgres, dynamo = stores
    w = reads_world
    a = w.customers[0]
    first = dynamo.payments_by_customer(a, limit=10)
    assert first.next is not None
    assert typed(postgres.payments_by_customer(a, limit=10, after=first.next)) == typed(
        dynamo.payments_by_customer(a, limit=10, after=first.next)
    )
    logs_first = postgres.logs_by_application(w.apps[0], limit=10)
    assert typed(dynamo.logs_by_application(w.apps[0], limit=10, after=logs_first.next)) == typed(
        postgres.logs_by_application(w.apps[0], limit=10, after=logs_first.next)
    )
    # A cursor continues only the listing that made it.
    for reader in stores:
        with pytest.raises(QueryError, match="cursor"):
            reader.payments_by_customer(w.customers[1], limit=10, after=first.next)
        with pytest.raises(QueryError, match="cursor"):
            reader.logs_by_application(w.apps[0], limit=10, after=first.next)


# --- routing --------------------------------------------------------------------------------


def _move(store: PhaseStore, table: str, phase: str) -> float:
    store.set(table, phase, who="test_reads", why="read path test", force=True)
    return time.monotonic()


def test_hybrid_read_falls_back_while_dynamodb_is_down(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
) -> None:
    postgres, _ = stores
    w = reads_world
    phases = PhaseStore(w.settings)
    since = dt.datetime.now(dt.UTC)
    _move(phases, w.logs_table, "hybrid-read")
    _move(phases, w.payments_table, "hybrid-read")
    path = ReadPath(with_dead_dynamodb(w.settings), phases)
    try:
        calls = [
            ("logs_by_application", (w.apps[0],), {"limit": 20}),
            ("failures_of_day", (w.log_days[1].isoformat(),), {"limit": 20}),
            ("log_by_id", (w.log_ids[0],), {}),
            ("payments_by_customer", (w.customers[0],), {"limit": 20}),
            ("payment_by_id", (w.payment_ids[0],), {}),
        ]
        for pattern, args, kwargs in calls:
            started = time.monotonic()
            served = path.read(pattern, *args, **kwargs)
            assert time.monotonic() - started < 5, "a fallback must not wait long"
            assert served.source == "postgres"
            assert typed(served.value) == typed(getattr(postgres, pattern)(*args, **kwargs))
        fallbacks = path.metrics.fallbacks
        assert fallbacks.labels(w.logs_table, "error")._value.get() == 3
        assert fallbacks.labels(w.payments_table, "error")._value.get() == 2
        path.flush()  # buffered, normally every reads.incident_flush_s
        assert phases.incidents(w.logs_table, "fallback", since) == 3
        assert phases.incidents(w.payments_table, "fallback", since) == 2
        # dynamodb-only has nothing to fall back to: the error is the answer.
        _move(phases, w.payments_table, "dynamodb-only")
        time.sleep(w.settings.reads.cache_s + 0.2)
        with pytest.raises(StoreError, match="dynamodb"):
            path.payments_by_customer(w.customers[0])
        # Rollback is immediate in the store and applies within cache_s.
        _move(phases, w.payments_table, "postgres-only")
        time.sleep(w.settings.reads.cache_s + 0.2)
        assert path.read("payments_by_customer", w.customers[0]).source == "postgres"
    finally:
        path.close()
        _move(phases, w.logs_table, "postgres-only")
        _move(phases, w.payments_table, "postgres-only")
        phases.close()


def test_without_the_phase_store_reads_go_to_postgresql_and_keep_the_last_phase(
    reads_world: ReadsWorld,  # noqa: F811
) -> None:
    w = reads_world
    dead_control = w.settings.control.model_copy(
        update={"dsn": f"host=127.0.0.1 port={closed_port()} dbname=x user=x connect_timeout=2"}
    )
    unreachable = PhaseStore(w.settings.model_copy(update={"control": dead_control}))
    path = ReadPath(w.settings, unreachable)
    try:
        # Nothing known yet: PostgreSQL, which has every write in every phase.
        assert path.read("payment_by_id", w.payment_ids[0]).source == "postgres"
        assert path.metrics.phase_failures._value.get() == 1
        # Known, then the store goes away: the last known phase stays in use.
        path._known = {w.payments_table: "dynamodb-only"}
        path._fetched = -float("inf")
        assert path.read("payment_by_id", w.payment_ids[0]).source == "dynamodb"
        assert path.metrics.phase_failures._value.get() == 2
    finally:
        path.close()


def test_phase_changes_under_concurrent_readers_and_shadow_mismatches(
    reads_world: ReadsWorld,  # noqa: F811
    stores: Any,
    pg: psycopg.Connection[Any],
) -> None:
    postgres, dynamo = stores
    w = reads_world
    customer = w.customers[0]
    # Make the stores differ, as replication lag would: stop our consumer, write a payment.
    assert w.consumer.stop() == 0
    phases = PhaseStore(w.settings)
    path = ReadPath(w.settings, phases)
    cache_s = w.settings.reads.cache_s
    try:
        new_pid = pg.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, paymentstatus) "
            "VALUES (%s, 999, %s, 10.10, 10.00, 0.10, 'ACH', 'Pending') RETURNING paymentid",
            [w.loans[customer][0], w.pay_end],
        ).fetchone()[0]
        expected = {
            "postgres": typed(postgres.payments_by_customer(customer, limit=20)),
            "dynamodb": typed(dynamo.payments_by_customer(customer, limit=20)),
        }
        assert expected["postgres"] != expected["dynamodb"]

        results: list[tuple[float, str, bool]] = []
        stop = threading.Event()
        failures: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    started = time.monotonic()
                    served = path.read("payments_by_customer", customer, limit=20)
                    results.append(
                        (started, served.source, typed(served.value) == expected[served.source])
                    )
            except BaseException as exc:  # surfaced below
                failures.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        asked_dynamo = time.monotonic()  # (the change commits between these two instants)
        to_dynamo = _move(phases, w.payments_table, "dynamodb-only")
        time.sleep(cache_s + 2.0)
        asked_back = time.monotonic()
        back = _move(phases, w.payments_table, "postgres-only")  # rollback
        time.sleep(cache_s + 2.0)
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures
        assert all(ok for _, _, ok in results), "a result matched neither store"
        before = {s for t, s, _ in results if t < asked_dynamo}
        on_dynamo = {s for t, s, _ in results if to_dynamo + cache_s + 0.1 < t < asked_back}
        after = {s for t, s, _ in results if t > back + cache_s + 0.1}
        assert before == {"postgres"} and on_dynamo == {"dynamodb"} and after == {"postgres"}
        assert len(results) > 50

        # hybrid-read: DynamoDB misses the new payment, PostgreSQL has it (a counted fallback).
        _move(phases, w.payments_table, "hybrid-read")
        time.sleep(cache_s + 0.2)
        served = path.read("payment_by_id", new_pid)
        assert served.source == "postgres" and served.value is not None
        assert path.metrics.fallbacks.labels(w.payments_table, "miss")._value.get() == 1
        assert path.read("payment_by_id", w.payment_ids[1]).source == "dynamodb"

        # Shadow reads in dual-write: serve PostgreSQL, compare DynamoDB, record the mismatch.
        since = dt.datetime.now(dt.UTC)
        _move(phases, w.payments_table, "dual-write")
        shadow = ReadPath(w.settings, phases, shadow=True)
        try:
            time.sleep(cache_s + 0.2)
            assert shadow.payments_by_customer(customer, limit=20).source == "postgres"
            assert shadow.read("payment_by_id", w.payment_ids[2]).source == "postgres"
            shadow.drain()
            assert shadow.metrics.mismatches.labels(w.payments_table)._value.get() == 1
            shadow.flush()
            assert phases.incidents(w.payments_table, "mismatch", since) == 1
        finally:
            shadow.close()
    finally:
        path.close()
        w.consumer.start()
        _move(phases, w.payments_table, "postgres-only")
        phases.close()
    # Replicated again: the stores agree, and shadow reads find nothing to record.
    wait_for(
        lambda: (
            typed(postgres.payments_by_customer(customer, limit=20))
            == typed(dynamo.payments_by_customer(customer, limit=20))
        ),
        300,
        interval_s=0.5,
        what="the consumer replicated the new payment",
    )
    quiet = ReadPath(w.settings, PhaseStore(w.settings), shadow=True)
    try:
        quiet.payments_by_customer(customer, limit=20)
        quiet.drain()
        assert quiet.metrics.mismatches.labels(w.payments_table)._value.get() == 0
    finally:
        quiet.close()
        quiet.phases.close()  # type: ignore[union-attr]
