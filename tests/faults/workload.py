"""The fault suite's workload: inserts, updates (key moves and NULL churn included), deletes and
delete + re-insert of one key, on both tables, in small transactions, from one writer thread.

It touches only rows it made itself, and records every primary key it touched and every
DynamoDB key those rows occupied, so the checker knows which rows and keys to look at and the
regression poller has keys to watch. A transaction whose commit fails (PostgreSQL restarted
under it) is in doubt: its keys are recorded all the same, and the writer re-reads which of its
rows exist before going on. The checker compares with PostgreSQL's final state, so an in-doubt
commit needs no bookkeeping beyond that.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg

from tests.faults.model import log_key, payment_key

SERVICES = ["CreditCheckService", "PaymentGateway", "DocumentStore", "EmailService", "SmsApi"]
LOG_TYPES = ["Credit Check", "Payment Processing", "Document Upload", "Email Notification"]
METHODS = ["ACH", "Check", "Online", "Cash"]
STATUSES = ["Pending", "Completed", "Failed", "Reversed"]
LOG_COLUMNS = "logid, servicename, logtimestamp"
PAYMENT_COLUMNS = "paymentid, paymentdate, loanid"


@dataclass
class Counts:
    transactions: int = 0
    changes: int = 0  # row changes committed (or in doubt)
    inserts: int = 0
    updates: int = 0
    key_moves: int = 0
    null_churn: int = 0
    deletes: int = 0
    reinserts: int = 0
    in_doubt: int = 0
    failed: int = 0


@dataclass
class Touched:
    """What the workload wrote: primary keys per table and DynamoDB keys seen."""

    logs: set[int] = field(default_factory=set)
    payments: set[int] = field(default_factory=set)
    keys: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (table, key)


class FaultWorkload:
    def __init__(self, dsn: str, seed: int, customers: int = 12) -> None:
        self.dsn = dsn
        self.rng = random.Random(seed)
        self.counts = Counts()
        self.touched = Touched()
        self.lock = threading.Lock()
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.loans: dict[int, int] = {}  # loanid -> customerid
        self.logs: set[int] = set()  # rows alive now (as far as this writer knows)
        self.payments: set[int] = set()
        self.deleted_logs: list[int] = []
        self.deleted_payments: list[int] = []
        self._make_loans(customers)
        self.stop_event = threading.Event()
        self.burst_committed = threading.Event()
        self.thread: threading.Thread | None = None
        self.errors: list[str] = []

    # --- set-up ---------------------------------------------------------------------------

    def _make_loans(self, customers: int) -> None:
        with self.conn.transaction():
            for _ in range(customers):
                customer = self.rng.randint(10_000, 99_999_999)
                app = self.conn.execute(
                    "INSERT INTO dbo.applications (customerid, requestedamount) "
                    "VALUES (%s, 10000.00) RETURNING applicationid",
                    [customer],
                ).fetchone()
                assert app is not None
                loan = self.conn.execute(
                    "INSERT INTO dbo.loans (applicationid, principal, interestrate) "
                    "VALUES (%s, 10000.00, 0.0500) RETURNING loanid",
                    [app[0]],
                ).fetchone()
                assert loan is not None
                self.loans[loan[0]] = customer

    # --- the writer thread ----------------------------------------------------------------

    def start(self, rate_tx_s: float, burst_every: int = 0, burst_rows: int = 0) -> None:
        """Write transactions at about ``rate_tx_s`` per second until ``stop()``; every
        ``burst_every`` transactions, one transaction of ``burst_rows`` key moves."""

        self.stop_event.clear()  # started again after a stop(): an idle window between

        def run() -> None:
            n = 0
            while not self.stop_event.is_set():
                started = time.monotonic()
                n += 1
                if burst_every and n % burst_every == 0:
                    self.transaction(lambda: self.key_move_burst(burst_rows), burst=True)
                else:
                    self.transaction(self.mixed)
                pause = 1.0 / rate_tx_s - (time.monotonic() - started)
                if pause > 0:
                    self.stop_event.wait(pause)

        self.thread = threading.Thread(target=run, name="fault-workload", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(60)
            assert not self.thread.is_alive(), "workload writer did not stop"

    def transaction(self, body: Any, burst: bool = False) -> None:
        """One transaction; on a failure (PostgreSQL away) reconnect and resynchronise."""
        before = self.counts.changes
        try:
            with self.conn.transaction():
                body()
            self.counts.transactions += 1
            if burst:
                self.burst_committed.set()
        except psycopg.Error as exc:
            # The commit may or may not have happened: the keys stay recorded either way.
            if self.counts.changes > before:
                self.counts.in_doubt += 1
            self.counts.failed += 1
            self.errors.append(type(exc).__name__)
            self._reconnect()

    def _reconnect(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                self.conn.close()
                self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                self.resync()
                return
            except psycopg.Error:
                time.sleep(0.5)

    def resync(self) -> None:
        """Which of the rows this writer made exist (after an in-doubt commit)."""
        with self.lock:
            logs, payments = list(self.touched.logs), list(self.touched.payments)
        found_logs = self.conn.execute(
            "SELECT logid FROM dbo.integrationlogs WHERE logid = ANY(%s)", [logs]
        ).fetchall()
        found_payments = self.conn.execute(
            "SELECT paymentid FROM dbo.payments WHERE paymentid = ANY(%s)", [payments]
        ).fetchall()
        self.logs = {r[0] for r in found_logs}
        self.payments = {r[0] for r in found_payments}
        self.deleted_logs = [k for k in logs if k not in self.logs]
        self.deleted_payments = [k for k in payments if k not in self.payments]

    # --- changes --------------------------------------------------------------------------

    def mixed(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            roll = self.rng.random()
            if roll < 0.22 or len(self.logs) + len(self.payments) < 20:
                self.insert_log()
            elif roll < 0.40:
                self.insert_payment()
            elif roll < 0.55:
                self.null_churn()
            elif roll < 0.75:
                self.key_move()
            elif roll < 0.88:
                self.delete()
            else:
                self.delete_and_reinsert()

    def insert_log(self, logid: int | None = None) -> None:
        ok = self.rng.random() > 0.25
        when = dt.datetime(2024, 3, 1) + dt.timedelta(
            days=self.rng.randint(0, 20), microseconds=self.rng.randint(0, 86_399_999_999)
        )
        values: dict[str, Any] = {
            "applicationid": self.rng.choice([None, self.rng.randint(1, 900)]),
            "logtype": self.rng.choice(LOG_TYPES),
            "servicename": self.rng.choice(SERVICES),
            "requestdata": self.rng.choice(
                [None, f'{{"amount": "1234.50", "who": "Zoë 测试", "n": {self.rng.randint(1, 9)}}}']
            ),
            "responsedata": '{"ok": true}' if ok else None,
            "statuscode": "200" if ok else "503",
            "issuccess": ok,
            "errormessage": None if ok else "upstream unavailable",
            "processingtimems": self.rng.choice([None, self.rng.randint(1, 5000)]),
            "logtimestamp": when,
            "correlationid": self.rng.choice([None, f"corr-{self.rng.randint(1, 10**6)}"]),
            "userid": f"user{self.rng.randint(1, 40)}",
        }
        if logid is not None:
            values["logid"] = logid
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        row = self.conn.execute(
            f"INSERT INTO dbo.integrationlogs ({names}) VALUES ({marks}) RETURNING {LOG_COLUMNS}",
            list(values.values()),
        ).fetchone()
        self._log_written(row)
        self.counts.inserts += 1

    def insert_payment(self, paymentid: int | None = None) -> None:
        amount = Decimal(self.rng.randint(1, 999_999)) / 100  # up to 9,999.99: numeric(10,2)
        interest = (amount * Decimal("0.0725")).quantize(Decimal("0.01"))
        values: dict[str, Any] = {
            "loanid": self.rng.choice(list(self.loans)),
            "paymentnumber": self.rng.randint(1, 360),
            "paymentdate": dt.date(2024, 1, 1) + dt.timedelta(days=self.rng.randint(0, 300)),
            "paymentamount": amount,
            "principalamount": amount - interest,
            "interestamount": interest,
            "paymentmethod": self.rng.choice(METHODS),
            "paymentstatus": self.rng.choice(STATUSES),
            "transactionid": self.rng.choice([None, f"tx-{self.rng.randint(1, 10**9)}"]),
        }
        if paymentid is not None:
            values["paymentid"] = paymentid
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        row = self.conn.execute(
            f"INSERT INTO dbo.payments ({names}) VALUES ({marks}) RETURNING {PAYMENT_COLUMNS}",
            list(values.values()),
        ).fetchone()
        self._payment_written(row)
        self.counts.inserts += 1

    def null_churn(self) -> None:
        """Columns between NULL and a value: attributes (and sparse index keys) come and go."""
        if self.logs and self.rng.random() < 0.6:
            logid = self.rng.choice(sorted(self.logs))
            row = self.conn.execute(
                "UPDATE dbo.integrationlogs SET "
                "correlationid = CASE WHEN correlationid IS NULL THEN %s END, "
                "applicationid = CASE WHEN applicationid IS NULL THEN %s END, "
                "processingtimems = CASE WHEN processingtimems IS NULL THEN 7 END, "
                "issuccess = NOT issuccess, "
                "errormessage = CASE WHEN issuccess THEN 'now failing' END "
                f"WHERE logid = %s RETURNING {LOG_COLUMNS}",
                [f"corr-{self.rng.randint(1, 10**6)}", self.rng.randint(1, 900), logid],
            ).fetchone()
            self._log_written(row)
        elif self.payments:
            paymentid = self.rng.choice(sorted(self.payments))
            row = self.conn.execute(
                "UPDATE dbo.payments SET paymentstatus = %s, "
                "transactionid = CASE WHEN transactionid IS NULL THEN %s END "
                f"WHERE paymentid = %s RETURNING {PAYMENT_COLUMNS}",
                [self.rng.choice(STATUSES), f"tx-{self.rng.randint(1, 10**9)}", paymentid],
            ).fetchone()
            self._payment_written(row)
        else:
            return
        self.counts.updates += 1
        self.counts.null_churn += 1

    def key_move(self) -> None:
        """An update of a key column: the item moves to another DynamoDB key."""
        roll = self.rng.random()
        if self.logs and roll < 0.5:
            logid = self.rng.choice(sorted(self.logs))
            if self.rng.random() < 0.5:
                sql = (
                    "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + "
                    "interval '1 day 1 microsecond'"
                )
                params: list[Any] = []
            else:
                sql = "UPDATE dbo.integrationlogs SET servicename = %s"
                params = [self.rng.choice(SERVICES)]
            row = self.conn.execute(
                f"{sql} WHERE logid = %s RETURNING {LOG_COLUMNS}", [*params, logid]
            ).fetchone()
            self._log_written(row)
        elif self.payments:
            paymentid = self.rng.choice(sorted(self.payments))
            if self.rng.random() < 0.6:
                sql = "UPDATE dbo.payments SET paymentdate = paymentdate + 1"
                params = []
            else:  # another loan: another customer, so another partition key
                sql = "UPDATE dbo.payments SET loanid = %s"
                params = [self.rng.choice(list(self.loans))]
            row = self.conn.execute(
                f"{sql} WHERE paymentid = %s RETURNING {PAYMENT_COLUMNS}", [*params, paymentid]
            ).fetchone()
            self._payment_written(row)
        else:
            return
        self.counts.updates += 1
        self.counts.key_moves += 1

    def key_move_burst(self, rows: int) -> None:
        """One transaction moving many rows' keys (both tables): many key-move writes in one
        batch of the consumer."""
        logs = self.rng.sample(sorted(self.logs), min(rows // 2, len(self.logs)))
        payments = self.rng.sample(sorted(self.payments), min(rows // 2, len(self.payments)))
        for row in self.conn.execute(
            "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval '1 hour' "
            f"WHERE logid = ANY(%s) RETURNING {LOG_COLUMNS}",
            [logs],
        ).fetchall():
            self._log_written(row)
        for row in self.conn.execute(
            "UPDATE dbo.payments SET paymentdate = paymentdate + 1 "
            f"WHERE paymentid = ANY(%s) RETURNING {PAYMENT_COLUMNS}",
            [payments],
        ).fetchall():
            self._payment_written(row)
        moved = len(logs) + len(payments)
        self.counts.updates += moved
        self.counts.key_moves += moved

    def delete(self) -> None:
        if self.logs and self.rng.random() < 0.5:
            logid = self.rng.choice(sorted(self.logs))
            self.conn.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
            self.logs.discard(logid)
            self.deleted_logs.append(logid)
        elif self.payments:
            paymentid = self.rng.choice(sorted(self.payments))
            self.conn.execute("DELETE FROM dbo.payments WHERE paymentid = %s", [paymentid])
            self.payments.discard(paymentid)
            self.deleted_payments.append(paymentid)
        else:
            return
        self.counts.deletes += 1
        self.counts.changes += 1

    def delete_and_reinsert(self) -> None:
        """A key deleted and inserted again (other values), in one transaction or a deleted key
        of an earlier one brought back."""
        if self.rng.random() < 0.5 and (self.deleted_logs or self.deleted_payments):
            if self.deleted_logs and (not self.deleted_payments or self.rng.random() < 0.5):
                self.insert_log(self.deleted_logs.pop(self.rng.randrange(len(self.deleted_logs))))
            else:
                index = self.rng.randrange(len(self.deleted_payments))
                self.insert_payment(self.deleted_payments.pop(index))
            self.counts.reinserts += 1
            return
        if self.logs and self.rng.random() < 0.5:
            logid = self.rng.choice(sorted(self.logs))
            self.conn.execute("DELETE FROM dbo.integrationlogs WHERE logid = %s", [logid])
            self.counts.changes += 1
            self.insert_log(logid)
        elif self.payments:
            paymentid = self.rng.choice(sorted(self.payments))
            self.conn.execute("DELETE FROM dbo.payments WHERE paymentid = %s", [paymentid])
            self.counts.changes += 1
            self.insert_payment(paymentid)
        else:
            return
        self.counts.deletes += 1
        self.counts.reinserts += 1

    def bulk_logs(self, rows: int, conn: psycopg.Connection[Any] | None = None) -> None:
        """``rows`` IntegrationLogs inserts in one statement, so one transaction (on ``conn``,
        or this writer's connection when its thread is not running), recorded like the rest."""
        written = (
            (conn or self.conn)
            .execute(
                "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, userid, "
                "processingtimems, logtimestamp) SELECT 'Bulk Load', 'BulkService', true, "
                "'user' || (n %% 40), n %% 5000, timestamp '2024-04-01' + n * interval '1 second' "
                f"FROM generate_series(1, %s) AS n RETURNING {LOG_COLUMNS}",
                [rows],
            )
            .fetchall()
        )
        assert len(written) == rows
        with self.lock:
            for logid, service, when in written:
                self.touched.logs.add(logid)
                self.touched.keys.append(("logs", log_key(logid, service, when)))
        self.counts.inserts += rows
        self.counts.changes += rows

    # --- records --------------------------------------------------------------------------

    def _log_written(self, row: Any) -> None:
        if row is None:
            return
        logid, service, when = row
        self.logs.add(logid)
        self.counts.changes += 1
        with self.lock:
            self.touched.logs.add(logid)
            self.touched.keys.append(("logs", log_key(logid, service, when)))

    def _payment_written(self, row: Any) -> None:
        if row is None:
            return
        paymentid, date, loanid = row
        self.payments.add(paymentid)
        self.counts.changes += 1
        with self.lock:
            self.touched.payments.add(paymentid)
            self.touched.keys.append(("payments", payment_key(paymentid, date, self.loans[loanid])))

    def close(self) -> None:
        self.conn.close()
