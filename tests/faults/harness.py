"""One fault scenario from start to verdict.

A scenario gets a consumer (``replicator run`` as a child process, its own tables and group,
starting at the topics' ends) whose DynamoDB endpoint is a ``FaultProxy``, a workload writing
to PostgreSQL and a regression poller. The scenario breaks something, says when the fault
ended (``fault_over``), and ``finish`` measures recovery, stops the workload, waits for the
pipeline to be quiet and checks every invariant:

- I1-I3: the checker's verdict against PostgreSQL (lost, divergent, resurrected);
- I4: the poller's regressions;
- I5: write units the endpoint reported for forwarded writes, per row change the workload made,
  within ``WRITE_UNIT_BUDGET``;
- I6: recovery, the seconds from the end of the fault until (a) the consumer group has
  committed every record the topics held at that moment and (b) a row inserted at that moment
  is readable in DynamoDB: lag back to its baseline, whichever part was broken.

Sizes scale with ``FAULTS_SCALE`` (1 in CI; ``bench/faults.py`` sets more).
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from replicator.config import Settings
from replicator.stack import LocalStack
from tests.faults.checker import RegressionPoller, Verdict, check, wait_until
from tests.faults.model import log_key
from tests.faults.proxy import FaultProxy
from tests.faults.workload import FaultWorkload
from tests.integration.conftest import Consumer
from tests.integration.second_source import SecondSource

SCALE = float(os.environ.get("FAULTS_SCALE", "1"))
# Write units per row change. An IntegrationLogs insert with all three sparse indexes set
# costs 1 + 4 (LogIdIndex included); a key move is a transaction (2 units per item) of the new
# item and the old key's marker, with their index writes. Retries after an ambiguous success
# and redelivery after a crash add a little; a consumer that rewrote its whole batch history
# after each fault would not fit.
WRITE_UNIT_BUDGET = 12.0
RESULTS = Path(os.environ.get("FAULTS_RESULTS", "")) if os.environ.get("FAULTS_RESULTS") else None


@dataclass
class Outcome:
    scenario: str
    events: int
    lost: int
    divergent: int
    resurrected: int
    regressions: int
    units_per_change: float
    recovery_s: float
    seconds: float
    verdict: Verdict

    def line(self) -> str:
        return (
            f"FAULTS {self.scenario}: events {self.events}, lost {self.lost}, divergent "
            f"{self.divergent}, resurrected {self.resurrected}, regressions {self.regressions}, "
            f"write units/change {self.units_per_change:.2f}, recovery {self.recovery_s:.1f} s "
            f"(scenario {self.seconds:.0f} s)"
        )

    def assert_clean(self) -> None:
        shown = "; ".join(self.verdict.details[:10])
        assert self.verdict.clean, f"{self.line()}: {shown}"
        assert self.regressions == 0, self.line()
        assert self.units_per_change <= WRITE_UNIT_BUDGET, (
            f"{self.line()}: over the budget of {WRITE_UNIT_BUDGET} write units per change"
        )


class FaultRun:
    def __init__(
        self,
        scenario: str,
        stack: LocalStack,
        settings: Settings,
        dynamodb: Any,
        consumer_factory: Callable[..., Any],
        seed: int = 11,
        change: Callable[[dict[str, Any]], None] | None = None,
        source: SecondSource | None = None,
    ) -> None:
        """``source``: a database and connector of the scenario's own (its topics new): the
        consumer reads them from their start, and the scenario starts it once they exist."""
        self.scenario = scenario
        self.stack = stack
        self.settings = settings
        self.dynamodb = dynamodb
        self.started = time.monotonic()
        assert settings.dynamodb.endpoint_url, "the fault suite needs a local endpoint"
        self.proxy = FaultProxy(settings.dynamodb.endpoint_url, seed=seed).start()
        suffix = f"_f{uuid.uuid4().hex[:6]}"

        def configure(data: dict[str, Any]) -> None:
            data["dynamodb"]["endpoint_url"] = self.proxy.url
            # Short timeouts so that a dropped answer costs seconds, not the 30 s default.
            data["dynamodb"]["connect_timeout_s"] = 2.0
            data["dynamodb"]["read_timeout_s"] = 3.0
            if source is not None:
                source.consumer_config(data)
            if change is not None:
                change(data)

        self.consumer, self.own = consumer_factory(suffix, change=configure)
        self.consumers = [self.consumer]
        self.removed: list[Consumer] = []
        self.tables = {"logs": self.own.tables[0].name, "payments": self.own.tables[1].name}
        self.topics = [self.own.topic_of(m) for m in self.own.tables]
        self.dsn = source.dsn if source is not None else settings.postgres.dsn()
        self.pg = psycopg.connect(self.dsn, autocommit=True)
        self.workload = FaultWorkload(self.dsn, seed=seed)  # its loans first
        self.memory = PeakMemory(self)
        if source is None:
            self._start_at_ends()
            self.consumer.start()
        self.poller = RegressionPoller(dynamodb, self.tables, self.workload.touched).start()
        self.fault_end: float | None = None
        self._watermarks: dict[tuple[str, int], int] = {}
        self._sentinel: dict[str, Any] | None = None

    def _start_at_ends(self) -> None:
        """The new group begins at the topics' current ends (not their history, long on a
        shared stack): offsets committed for it before its first member joins. The topics
        must exist first (Connect makes a table's topic with its first change)."""
        from confluent_kafka import Consumer, TopicPartition

        def topics_exist() -> bool:
            probe = Consumer(
                {"bootstrap.servers": self.own.kafka.bootstrap_servers, "group.id": "fault-probe"}
            )
            try:
                found = probe.list_topics(timeout=10).topics
            finally:
                probe.close()
            if all(t in found and found[t].partitions for t in self.topics):
                return True
            self.pg.execute(
                "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess) "
                "VALUES ('External API', 'FaultProbe', true)"
            )
            self.pg.execute(
                "INSERT INTO dbo.payments (loanid, paymentnumber, paymentdate, paymentamount, "
                "principalamount, interestamount, paymentmethod) SELECT max(loanid), 1, "
                "current_date, 1.00, 1.00, 0.00, 'ACH' FROM dbo.loans HAVING max(loanid) "
                "IS NOT NULL"
            )
            return False

        assert wait_until(topics_exist, 120, 1.0), f"topics {self.topics} never appeared"
        ends = self._high_watermarks()
        group = Consumer(
            {
                "bootstrap.servers": self.own.kafka.bootstrap_servers,
                "group.id": self.own.kafka.group_id,
                "enable.auto.commit": False,
            }
        )
        try:
            group.commit(
                offsets=[TopicPartition(t, p, end) for (t, p), end in ends.items()],
                asynchronous=False,
            )
        finally:
            group.close()
        assert self._committed_at_least(ends), "the new group's start offsets were not stored"

    # --- during the scenario ----------------------------------------------------------------

    def start_workload(self, rate_tx_s: float = 25.0, **kwargs: Any) -> None:
        self.workload.start(rate_tx_s, **kwargs)

    def add_consumer(self) -> Consumer:
        """Another member of the same group, on the same settings file."""
        n = len(self.consumers)
        member = Consumer(
            self.consumer.config, self.consumer.log.with_name(f"{self.own.kafka.group_id}-{n}.log")
        )
        self.consumers.append(member)
        member.start()
        return member

    def wait_events(self, n: int, timeout_s: float = 120) -> None:
        assert wait_until(lambda: self.workload.counts.changes >= n, timeout_s, 0.1), (
            f"workload reached {self.workload.counts.changes} of {n} changes"
        )

    def fault_over(self) -> None:
        """The fault has ended: snapshot what recovery must reach."""
        self.fault_end = time.monotonic()
        self._watermarks = self._high_watermarks()
        self._sentinel = self._insert_sentinel()

    # --- the end ------------------------------------------------------------------------

    def finish(
        self,
        settle_s: float = 3.0,
        quiet_timeout_s: float = 240,
        extra: Callable[[psycopg.Connection[Any]], Verdict] | None = None,
    ) -> Outcome:
        """``extra``: the scenario's own check of tables the checker does not know (same
        verdict fields), run with the checker's once the pipeline is quiet."""
        assert self.fault_end is not None, "the scenario did not say when its fault ended"
        recovery = self._recovery(timeout_s=quiet_timeout_s)
        time.sleep(settle_s)  # a little more load after recovery
        self.workload.stop()
        assert all(c.alive() for c in self.consumers if c not in self.removed), (
            "a consumer exited on its own"
        )
        # Quiet: a row written after the workload's last change is in DynamoDB (so Connect has
        # carried what PostgreSQL committed before it), and the group committed the topics'
        # ends. Judged only then; the verdict is the last quiet one's.
        end_row = self._insert_sentinel("FaultEnd")
        verdict = Verdict()
        quiet = False

        def converged() -> bool:
            nonlocal verdict, quiet
            quiet = self._visible(end_row) and self._committed_at_least(self._high_watermarks())
            if not quiet:
                return False
            # A connection of its own: PostgreSQL may have restarted under the harness's.
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                verdict = check(conn, self.dynamodb, self.tables, self.workload.touched)
                if extra is not None:
                    verdict = verdict.merged(extra(conn))
            return verdict.clean

        wait_until(converged, quiet_timeout_s, 2.0)
        if not quiet:
            raise AssertionError(
                f"{self.scenario}: not quiet within {quiet_timeout_s} s of the workload's end: "
                f"end row {'visible' if self._visible(end_row) else 'not in DynamoDB'}; "
                f"partitions short of the topics' ends: "
                f"{self._short_of(self._high_watermarks()) or 'none'}"
            )
        self.poller.stop()
        self.memory.stop()
        changes = self.workload.counts.changes
        outcome = Outcome(
            scenario=self.scenario,
            events=changes,
            lost=verdict.lost,
            divergent=verdict.divergent,
            resurrected=verdict.resurrected,
            regressions=self.poller.regressions,
            units_per_change=self.proxy.write_units / max(changes, 1),
            recovery_s=recovery,
            seconds=time.monotonic() - self.started,
            verdict=verdict,
        )
        print(outcome.line(), flush=True)
        if RESULTS is not None:
            with RESULTS.open("a") as out:
                out.write(outcome.line() + "\n")
        return outcome

    def close(self) -> None:
        self.workload.stop_event.set()
        self.poller.stop()
        self.memory.stop()
        for consumer in self.consumers:
            if consumer.alive():
                consumer.stop()
        self.proxy.stop()
        self.workload.close()
        self.pg.close()

    # --- measurements -----------------------------------------------------------------------

    def _recovery(self, timeout_s: float) -> float:
        assert self.fault_end is not None and self._sentinel is not None
        sentinel = self._sentinel

        def recovered() -> bool:
            return self._committed_at_least(self._watermarks) and self._visible(sentinel)

        if not wait_until(recovered, timeout_s, 0.25):
            raise AssertionError(
                f"{self.scenario}: no recovery within {timeout_s} s of the fault's end: "
                f"sentinel {'visible' if self._visible(sentinel) else 'not in DynamoDB'}; "
                f"partitions short of the fault's end: {self._short_of(self._watermarks) or 'none'}"
            )
        return time.monotonic() - self.fault_end

    def _visible(self, key: dict[str, Any]) -> bool:
        """The row's item is in the scenario's logs table."""
        try:
            found = self.dynamodb.get_item(
                TableName=self.tables["logs"], Key=key, ConsistentRead=True
            )
        except Exception:
            return False
        return "Item" in found

    def _short_of(self, marks: dict[tuple[str, int], int]) -> dict[str, str]:
        committed = self._committed_marks()
        return {
            f"{t}[{p}]": f"committed {committed.get((t, p))} of {end}"
            for (t, p), end in sorted(marks.items())
            if committed.get((t, p), -1) < end
        }

    def _insert_sentinel(self, service: str = "FaultSentinel") -> dict[str, Any]:
        """A row written the moment the fault ends (retried while PostgreSQL comes back), or
        after the workload's last change (``FaultEnd``)."""
        when = dt.datetime(2024, 6, 1, 12, 0, 0, 1)
        deadline = time.monotonic() + 120
        while True:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    row = conn.execute(
                        "INSERT INTO dbo.integrationlogs (logtype, servicename, issuccess, "
                        "logtimestamp) VALUES ('External API', %s, true, %s) RETURNING logid",
                        [service, when],
                    ).fetchone()
                assert row is not None
                return log_key(row[0], service, when)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _high_watermarks(self, timeout_s: float = 90) -> dict[tuple[str, int], int]:
        """Every partition's end; retried while the broker comes back from a fault."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self._high_watermarks_once()
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def _high_watermarks_once(self) -> dict[tuple[str, int], int]:
        from confluent_kafka import Consumer, TopicPartition

        probe = Consumer(
            {"bootstrap.servers": self.own.kafka.bootstrap_servers, "group.id": "fault-probe"}
        )
        try:
            marks: dict[tuple[str, int], int] = {}
            for topic in self.topics:
                meta = probe.list_topics(topic, timeout=30).topics[topic]
                for p in meta.partitions:
                    _low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                    marks[(topic, p)] = high
            return marks
        finally:
            probe.close()

    def _committed_marks(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets ({} while Kafka does not answer)."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        probe = Consumer(
            {
                "bootstrap.servers": self.own.kafka.bootstrap_servers,
                "group.id": self.own.kafka.group_id,
            }
        )
        try:
            partitions = [TopicPartition(t, p) for t, p in self._high_watermarks()]
            committed = probe.committed(partitions, timeout=10)
        except KafkaException:
            return {}
        finally:
            probe.close()
        return {(tp.topic, tp.partition): tp.offset for tp in committed}

    def _committed_at_least(self, marks: dict[tuple[str, int], int]) -> bool:
        committed = self._committed_marks()
        return bool(committed) and all(committed.get(tp, -1) >= end for tp, end in marks.items())

    def wait_progress(self, marks: dict[tuple[str, int], int], timeout_s: float) -> bool:
        """Until the group commits past ``marks`` on some partition."""

        def moved() -> bool:
            now = self._committed_marks()
            return any(now.get(tp, -1) > offset for tp, offset in marks.items())

        return bool(wait_until(moved, timeout_s, 0.2))


class PeakMemory:
    """The consumers' peak resident memory, sampled twice a second from /proc (VmHWM: the
    kernel's high-water mark of the process, so a peak between samples is not missed). Peaks
    are per process; a restarted consumer is a new process with its own."""

    def __init__(self, run: FaultRun) -> None:
        self.run = run
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()

    def now_kb(self) -> int:
        """The highest current resident size among the running consumers."""
        return max((_status_kb(c, "VmRSS") for c in self.run.consumers), default=0)

    def sample(self) -> None:
        for consumer in list(self.run.consumers):
            self.peak_kb = max(self.peak_kb, _status_kb(consumer, "VmHWM"))

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()


def _status_kb(consumer: Consumer, field: str) -> int:
    """A field of /proc/PID/status in kB (0 when the process is not running)."""
    if consumer.proc is None or consumer.proc.poll() is not None:
        return 0
    try:
        text = Path(f"/proc/{consumer.proc.pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def topic_records(source: SecondSource, topic: str, timeout_s: float = 30) -> int:
    """Records in a source's topic; retried while the topic is new (no leader elected yet)."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return source.topic_records(topic)
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
