"""A realistic sample workload on the source tables, for the demo, tests and benchmarks:
logs of many services and days (failures, NULL correlation ids, JSON bodies), payments of many
customers, updates (status changes, key moves) and deletes, in small transactions."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg

SERVICES = [
    ("CreditCheckService", "Credit Check"),
    ("PaymentGateway", "Payment Processing"),
    ("DocumentStore", "Document Upload"),
    ("EmailService", "Email Notification"),
    ("SmsService", "SMS Notification"),
    ("OpenBankingApi", "External API"),
]
METHODS = ["ACH", "Check", "Online", "Cash"]
STATUSES = ["Pending", "Completed", "Failed", "Reversed"]


@dataclass
class WorkloadCounts:
    inserts: int = 0
    updates: int = 0
    key_moves: int = 0
    deletes: int = 0

    @property
    def total(self) -> int:
        return self.inserts + self.updates + self.deletes


class Workload:
    def __init__(
        self, conn: psycopg.Connection[Any], seed: int = 7, key_move_share: float = 0.3
    ) -> None:
        self.conn = conn
        self.key_move_share = key_move_share
        self.rng = random.Random(seed)
        self.counts = WorkloadCounts()
        self.loans: list[int] = []

    def ensure_loans(self, customers: int = 20) -> None:
        """Applications and loans that payments can reference."""
        with self.conn.transaction():
            for _ in range(customers):
                customer = self.rng.randint(1000, 99999)
                app = self.conn.execute(
                    "INSERT INTO dbo.applications (customerid, requestedamount) VALUES (%s, %s) "
                    "RETURNING applicationid",
                    [customer, Decimal("25000.00")],
                ).fetchone()[0]
                loan = self.conn.execute(
                    "INSERT INTO dbo.loans (applicationid, principal, interestrate) "
                    "VALUES (%s, 25000.00, 0.0725) RETURNING loanid",
                    [app],
                ).fetchone()[0]
                self.loans.append(loan)

    def insert_log(self) -> None:
        service, logtype = self.rng.choice(SERVICES)
        ok = self.rng.random() > 0.2
        when = dt.datetime(2024, 1, 1) + dt.timedelta(
            days=self.rng.randint(0, 30), microseconds=self.rng.randint(0, 86_399_999_999)
        )
        body = json.dumps(
            {
                "request": self.rng.randint(1, 10**6),
                "who": "Zoë",
                "padding": "x" * self.rng.choice([10, 100, 1000]),
            }
        )
        self.conn.execute(
            "INSERT INTO dbo.integrationlogs (applicationid, logtype, servicename, requestdata, "
            "responsedata, statuscode, issuccess, errormessage, processingtimems, logtimestamp, "
            "correlationid, userid) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                self.rng.choice([None, self.rng.randint(1, 500)]),
                logtype,
                service,
                body,
                '{"ok": true}' if ok else None,
                "200" if ok else "503",
                ok,
                None if ok else "upstream unavailable",
                self.rng.randint(5, 4000),
                when,
                self.rng.choice([None, f"corr-{self.rng.randint(1, 10**6)}"]),
                f"user{self.rng.randint(1, 50)}",
            ],
        )
        self.counts.inserts += 1

    def insert_payment(self) -> None:
        if not self.loans:
            self.ensure_loans()
        amount = Decimal(self.rng.randint(1, 500_000)) / 100
        interest = (amount * Decimal("0.07")).quantize(Decimal("0.01"))
        self.conn.execute(
            "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
            "principalamount, interestamount, paymentmethod, paymentstatus, transactionid) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                self.rng.choice(self.loans),
                self.rng.randint(1, 360),
                dt.date(2024, 1, 1) + dt.timedelta(days=self.rng.randint(0, 365)),
                amount,
                amount - interest,
                interest,
                self.rng.choice(METHODS),
                self.rng.choice(STATUSES),
                self.rng.choice([None, f"tx-{self.rng.randint(1, 10**9)}"]),
            ],
        )
        self.counts.inserts += 1

    def update_some(self) -> None:
        table = self.rng.choice(["integrationlogs", "payments"])
        if table == "payments":
            if self.rng.random() < self.key_move_share:  # the date is part of the sort key
                sql = (
                    "UPDATE dbo.payments SET paymentdate = paymentdate + 1 WHERE paymentid = "
                    "(SELECT paymentid FROM dbo.payments ORDER BY random() LIMIT 1)"
                )
                self.counts.key_moves += 1
            else:
                sql = (
                    "UPDATE dbo.payments SET paymentstatus = %s WHERE paymentid = "
                    "(SELECT paymentid FROM dbo.payments ORDER BY random() LIMIT 1)"
                )
        elif self.rng.random() < 0.3:
            sql = (
                "UPDATE dbo.integrationlogs SET logtimestamp = logtimestamp + interval "
                "'1 day 1 microsecond' WHERE logid = (SELECT logid FROM dbo.integrationlogs "
                "ORDER BY random() LIMIT 1)"
            )
            self.counts.key_moves += 1
        else:
            sql = (
                "UPDATE dbo.integrationlogs SET issuccess = NOT issuccess, statuscode = %s "
                "WHERE logid = (SELECT logid FROM dbo.integrationlogs ORDER BY random() "
                "LIMIT 1)"
            )
        params = [self.rng.choice(STATUSES if table == "payments" else ["200", "500"])]
        self.conn.execute(sql, params if "%s" in sql else None)
        self.counts.updates += 1

    def delete_some(self) -> None:
        table, key = self.rng.choice([("integrationlogs", "logid"), ("payments", "paymentid")])
        self.conn.execute(
            f"DELETE FROM dbo.{table} WHERE {key} = (SELECT {key} FROM dbo.{table} "
            "ORDER BY random() LIMIT 1)"
        )
        self.counts.deletes += 1

    def step(self) -> None:
        """One transaction of a few mixed changes."""
        with self.conn.transaction():
            for _ in range(self.rng.randint(1, 4)):
                roll = self.rng.random()
                if roll < 0.35:
                    self.insert_log()
                elif roll < 0.65:
                    self.insert_payment()
                elif roll < 0.9:
                    self.update_some()
                else:
                    self.delete_some()
