"""The invariants: I1 nothing lost, I2 nothing divergent, I3 no resurrection (compared with
PostgreSQL once the pipeline is quiet), and I4 no regression (watched all along by a poller)."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from tests.faults.model import KEYS, ROW_ID, differences, expected, key_text
from tests.faults.workload import Touched


@dataclass
class Verdict:
    lost: int = 0
    divergent: int = 0
    resurrected: int = 0
    checked: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.divergent or self.resurrected)

    def merged(self, other: Verdict) -> Verdict:
        return Verdict(
            lost=self.lost + other.lost,
            divergent=self.divergent + other.divergent,
            resurrected=self.resurrected + other.resurrected,
            checked=self.checked + other.checked,
            details=self.details + other.details,
        )


def scan(client: Any, kind: str, table: str) -> dict[str, dict[str, Any]]:
    """Every live item (delete markers left out) by key text."""
    items = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        for item in page["Items"]:
            if item.get("_deleted", {}).get("BOOL"):
                continue
            items[key_text(kind, item)] = item
    return items


def check(
    conn: psycopg.Connection[Any], client: Any, tables: dict[str, str], touched: Touched
) -> Verdict:
    """Compare the rows the workload touched, as PostgreSQL holds them now, with the items.
    ``tables``: "logs"/"payments" -> the DynamoDB table name."""
    verdict = Verdict()
    ids = {"logs": set(touched.logs), "payments": set(touched.payments)}
    want = expected(conn, ids["logs"], ids["payments"])
    for kind, name in tables.items():
        live = scan(client, kind, name)
        alive_ids = {int(item[ROW_ID[kind]]["N"]) for item in want[kind].values()}
        for key, item in want[kind].items():
            verdict.checked += 1
            got = live.get(key)
            if got is None:
                verdict.lost += 1
                verdict.details.append(f"lost {kind} {key}")
            elif diffs := differences(item, got):
                verdict.divergent += 1
                verdict.details.append(f"divergent {kind} {key}: {diffs}")
        for key, item in live.items():
            if key in want[kind]:
                continue
            row = int(item[ROW_ID[kind]]["N"])
            if row not in ids[kind]:
                continue  # not the workload's (a probe row of the harness)
            if row in alive_ids:  # the row lives at another key: a key move left this behind
                verdict.divergent += 1
                verdict.details.append(f"stale item after a key move {kind} {key}")
            else:
                verdict.resurrected += 1
                verdict.details.append(f"resurrected {kind} {key}")
    return verdict


class RegressionPoller:
    """Reads a sample of the workload's keys every ~100 ms, straight from the endpoint, and
    counts every read where an item's ``_pos`` is lower than an earlier read's, or an item
    that was there is gone (a delete leaves a marker: an item never disappears)."""

    def __init__(
        self, client: Any, tables: dict[str, str], touched: Touched, sample: int = 64
    ) -> None:
        self.client = client
        self.tables = tables
        self.touched = touched
        self.size = sample
        self.rng = random.Random(5)
        self.sample: list[tuple[str, dict[str, Any]]] = []
        self.seen_keys = 0
        self.last: dict[tuple[str, str], str] = {}
        self.regressions = 0
        self.reads = 0
        self.errors = 0
        self.details: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="regression-poller", daemon=True)

    def start(self) -> RegressionPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _refresh_sample(self) -> None:
        """Reservoir sampling over the stream of keys the workload wrote."""
        new = self.touched.keys[self.seen_keys :]  # a list only appended to: a slice is safe
        for entry in new:
            self.seen_keys += 1
            if len(self.sample) < self.size:
                self.sample.append(entry)
            else:
                slot = self.rng.randrange(self.seen_keys)
                if slot < self.size:
                    dropped = self.sample[slot]
                    self.last.pop((dropped[0], key_text(*dropped)), None)
                    self.sample[slot] = entry

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._refresh_sample()
            if not self.sample:
                continue
            try:
                self._read_once()
            except Exception:  # the endpoint may be the part under fault: count, go on
                self.errors += 1

    def _read_once(self) -> None:
        request: dict[str, Any] = {}
        for kind, key in {(k, key_text(k, v)): (k, v) for k, v in self.sample}.values():
            entry = request.setdefault(
                self.tables[kind],
                {
                    "Keys": [],
                    "ConsistentRead": True,
                    "ProjectionExpression": ", ".join(f"#{i}" for i in range(3)),
                    "ExpressionAttributeNames": {
                        "#0": KEYS[kind][0],
                        "#1": KEYS[kind][1],
                        "#2": "_pos",
                    },
                },
            )
            entry["Keys"].append(key)
        answer = self.client.batch_get_item(RequestItems=request)
        found: dict[tuple[str, str], str] = {}
        for kind, name in self.tables.items():
            for item in answer.get("Responses", {}).get(name, []):
                found[(kind, key_text(kind, item))] = item.get("_pos", {}).get("S", "")
        unprocessed = {
            (kind, key_text(kind, k))
            for kind, name in self.tables.items()
            for k in answer.get("UnprocessedKeys", {}).get(name, {}).get("Keys", [])
        }
        self.reads += 1
        for kind, key in {(k, key_text(k, v)) for k, v in self.sample}:
            if (kind, key) in unprocessed:
                continue
            before = self.last.get((kind, key))
            now = found.get((kind, key))
            if before is not None and (now is None or now < before):
                self.regressions += 1
                self.details.append(f"{kind} {key}: _pos {before} -> {now}")
            if now is not None:
                self.last[(kind, key)] = now


def wait_until(check_fn: Any, timeout_s: float, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = check_fn()
    while not last and time.monotonic() < deadline:
        time.sleep(interval_s)
        last = check_fn()
    return last
