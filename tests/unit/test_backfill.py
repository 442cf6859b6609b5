"""Pure parts of backfill and snapshot: write-unit estimates, the token bucket, job planning,
--from-time, and the --where checks."""

from __future__ import annotations

import pytest

from replicator.config import Settings
from replicator.core.events import Origin, Position
from replicator.core.items import item_size
from replicator.errors import ConfigError
from replicator.ops.backfill import TokenBucket, parse_time, plan_jobs, write_units
from replicator.ops.snapshot import check_where, signal_data
from replicator.stream.sink import Write


def _write(settings: Settings, item: dict | None, origin: int = 0) -> Write:
    mapping = settings.tables[0]
    key = {"PK": {"S": "svc-2024-01-01"}, "SK": {"S": "x"}}
    return Write(
        mapping,
        key,
        item,
        Position(1, 1, 1),
        0,
        frozenset(),
        (Origin("t", 0, origin),),
    )


def test_item_size_counts_names_and_values() -> None:
    item = {"PK": {"S": "abc"}, "N1": {"N": "12345"}, "B": {"BOOL": True}, "Z": {"S": "é"}}
    assert item_size(item) == (2 + 3) + (2 + 4) + (1 + 1) + (1 + 2)


def test_write_units_round_up_per_kb_and_double_key_moves() -> None:
    s = Settings()
    small = _write(s, {"PK": {"S": "a"}, "X": {"S": "x" * 100}}, origin=1)
    big = _write(s, {"PK": {"S": "a"}, "X": {"S": "x" * 2500}}, origin=2)  # 3 KB
    marker = _write(s, None, origin=3)
    assert write_units([small]) == 1
    assert write_units([big]) == 3
    assert write_units([marker]) == 1
    assert write_units([small, big, marker]) == 5
    # A key move: the new item and the marker at the old key share their origins (one
    # transaction), and transactional writes cost double.
    move_new = _write(s, {"PK": {"S": "a"}, "X": {"S": "x" * 100}}, origin=9)
    move_old = _write(s, None, origin=9)
    assert write_units([move_new, move_old]) == 4
    # The batch lane puts both without a transaction; the transact lane doubles every write.
    assert write_units([move_new, move_old], "batch") == 2
    assert write_units([small, big, marker], "transact") == 10


def test_token_bucket_waits_for_debt() -> None:
    now = [0.0]
    bucket = TokenBucket(100, clock=lambda: now[0])
    assert bucket.take(100) == 0.0  # the first second's budget
    assert bucket.take(50) == pytest.approx(0.5)  # in debt: wait half a second
    now[0] = 0.5
    assert bucket.take(100) == pytest.approx(1.0)
    now[0] = 10.0  # refills up to the burst only
    assert bucket.take(100) == 0.0
    assert bucket.take(1) == pytest.approx(0.01)
    with pytest.raises(ConfigError):
        TokenBucket(0)


def test_plan_jobs_names_targets_and_groups() -> None:
    s = Settings()
    jobs = plan_jobs(s, None, None)
    assert [j.target.name for j in jobs] == [m.name for m in s.tables]
    assert all(j.shares_live_table for j in jobs)
    assert jobs[0].group_id == f"replicator-backfill.{jobs[0].mapping.name}.{jobs[0].mapping.name}"
    (one,) = plan_jobs(s, ["Payments"], "Payments_v2")
    assert one.target.name == "Payments_v2" and not one.shares_live_table
    assert one.group_id.endswith(".Payments.Payments_v2")
    both = plan_jobs(s, None, "{name}_copy")
    assert [j.target.name for j in both] == [f"{m.name}_copy" for m in s.tables]
    with pytest.raises(ConfigError, match="pattern with"):
        plan_jobs(s, None, "Single")
    with pytest.raises(ConfigError, match="no mapped table"):
        plan_jobs(s, ["Nope"], None)


def test_parse_time() -> None:
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-02") == 86_400_000
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_time("yesterday")
    with pytest.raises(ConfigError, match="future"):
        parse_time("2999-01-01")


@pytest.mark.parametrize(
    "where",
    [
        "1=1; DROP TABLE dbo.payments",
        "paymentid > 1 -- and the rest",
        "paymentid > 1 /* x */",
        "paymentstatus = 'Failed",
        "(paymentid > 1",
        "paymentid > 1)",
        "   ",
    ],
)
def test_check_where_refuses(where: str) -> None:
    with pytest.raises(ConfigError):
        check_where(where)


def test_check_where_and_signal_data() -> None:
    where = check_where(" paymentdate >= '2024-01-01' AND loanid IN (1, 2) ")
    assert where == "paymentdate >= '2024-01-01' AND loanid IN (1, 2)"
    with pytest.raises(ConfigError):  # refused even inside a literal: no parsing SQL here
        check_where("transactionid = 'a;b'")
    mapping = Settings().mapping_named("Payments")
    assert signal_data(mapping, None) == {
        "data-collections": ["dbo.payments"],
        "type": "incremental",
    }
    data = signal_data(mapping, where)
    assert data["additional-conditions"] == [
        {"data-collection": "dbo.payments", "filter": f"({where})"}
    ]


def test_live_yield_pauses_while_the_live_group_is_behind() -> None:
    import threading

    from replicator.ops.backfill import LiveYield

    s = Settings().model_copy(
        update={
            "backfill": Settings().backfill.model_copy(
                update={"live_check_s": 0.01, "live_lag_events": 100, "live_lag_s": 5.0}
            )
        }
    )
    answers = [(5000, 1.0), (50, 9.0), (10, 0.5), (99999, 99.0)]
    live = LiveYield(s, "Payments", threading.Event(), lag=lambda: answers.pop(0))
    live()  # behind by events, then by age, then within both bounds: goes on
    assert live.seen.samples == 3 and live.seen.paused_s > 0
    assert live.seen.max_events == 5000 and live.seen.max_seconds == 9.0
    assert answers == [(99999, 99.0)]

    idle = LiveYield(s, "Payments", threading.Event(), lag=lambda: None)  # no live consumer
    idle()
    assert idle.seen.samples == 0 and idle.seen.paused_s == 0

    stopping = threading.Event()
    stopping.set()  # a stop request ends the wait at once
    stuck = LiveYield(s, "Payments", stopping, lag=lambda: (10**6, 0.0))
    stuck()
    assert stuck.seen.samples == 1


def test_only_a_replay_into_the_live_table_refuses_events_older_than_the_horizon() -> None:
    s = Settings()
    (live,) = plan_jobs(s, ["Payments"], None)
    (fresh,) = plan_jobs(s, ["Payments"], "Payments_v2")
    assert live.refuses_old_events and not fresh.refuses_old_events
