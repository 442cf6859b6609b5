"""The one retry policy: full-jitter backoff up to the cap, attempts, a deadline per request,
liveness told between attempts; with an injected sleep and clock, so nothing waits."""

from __future__ import annotations

import pytest

from replicator.config import DynamoSettings
from replicator.observe.probes import Health
from replicator.stream.retry import RetryPolicy


class Clock:
    """A monotonic clock that moves only when the policy sleeps (or a test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def policy(clock: Clock, **fields: float) -> RetryPolicy:
    return RetryPolicy(sleep=clock.sleep, clock=clock, **fields)  # type: ignore[arg-type]


class Flaky:
    """Fails ``failures`` times with a retryable error, then answers."""

    def __init__(self, failures: int, clock: Clock | None = None, takes_s: float = 0.0) -> None:
        self.failures = failures
        self.calls = 0
        self.clock = clock
        self.takes_s = takes_s

    def __call__(self) -> str:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.takes_s  # each attempt takes its time
        if self.calls <= self.failures:
            raise ConnectionError("down")
        return "ok"


def retryable(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionError)


def test_the_policy_comes_from_the_settings() -> None:
    settings = DynamoSettings(
        max_attempts=4, backoff_base_s=0.2, backoff_cap_s=3.0, request_deadline_s=20.0
    )
    made = RetryPolicy.from_settings(settings)
    assert (made.attempts, made.base_s, made.cap_s, made.deadline_s) == (4, 0.2, 3.0, 20.0)


def test_backoff_is_full_jitter_exponential_up_to_the_cap() -> None:
    p = RetryPolicy(base_s=0.1, cap_s=1.0)
    for retry in range(12):
        high = min(1.0, 0.1 * 2**retry)
        waits = [p.backoff(retry) for _ in range(200)]
        assert all(0.0 <= w <= high for w in waits)
        assert min(waits) < 0.25 * high and max(waits) > 0.75 * high  # drawn from [0, high]
    assert 0.0 <= p.backoff(10**6) <= 1.0  # a batch retried for days does not overflow


def test_a_call_is_retried_until_it_answers() -> None:
    clock = Clock()
    attempt = Flaky(failures=3)
    assert policy(clock, attempts=5).call(attempt, retryable) == "ok"
    assert attempt.calls == 4 and len(clock.sleeps) == 3
    for retry, wait in enumerate(clock.sleeps):
        assert 0.0 <= wait <= min(5.0, 0.05 * 2**retry)


def test_a_call_stops_after_its_attempts_and_raises_the_last_error() -> None:
    clock = Clock()
    attempt = Flaky(failures=99)
    with pytest.raises(ConnectionError):
        policy(clock, attempts=4).call(attempt, retryable)
    assert attempt.calls == 4 and len(clock.sleeps) == 3


def test_a_call_is_not_retried_on_what_is_not_retryable() -> None:
    def refused() -> str:
        raise ValueError("no")

    clock = Clock()
    with pytest.raises(ValueError):
        policy(clock).call(refused, retryable)
    assert clock.sleeps == []


def test_no_retry_starts_past_the_deadline() -> None:
    """An endpoint that takes its whole read timeout (10 s here) to fail each attempt: the
    request gives up once the next attempt would start past its deadline, long before its
    attempts are spent."""
    clock = Clock()
    attempt = Flaky(failures=99, clock=clock, takes_s=10.0)
    started = clock()
    with pytest.raises(ConnectionError):
        policy(clock, attempts=100, base_s=1.0, cap_s=2.0, deadline_s=45.0).call(attempt, retryable)
    assert attempt.calls < 6
    # The last attempt began within the deadline; it ended at most one attempt later.
    assert clock() - started <= 45.0 + 10.0


def test_next_wait_is_none_when_attempts_or_deadline_are_spent() -> None:
    clock = Clock()
    p = policy(clock, attempts=3, base_s=1.0, cap_s=1.0, deadline_s=30.0)
    started = clock()
    assert p.next_wait(0, started) is not None
    assert p.next_wait(1, started) is not None
    assert p.next_wait(2, started) is None  # a third retry would be a fourth attempt
    clock.now += 30.0
    assert p.next_wait(0, started) is None


def test_wait_for_pauses_until_the_attempts_are_spent() -> None:
    clock = Clock()
    p = policy(clock, attempts=3, base_s=1.0, cap_s=1.0, deadline_s=100.0)
    assert [p.wait_for(retry, clock()) for retry in range(3)] == [True, True, False]
    assert len(clock.sleeps) == 2  # the refusal did not sleep


def test_liveness_is_told_on_both_sides_of_every_wait() -> None:
    clock = Clock()
    turns: list[float] = []
    p = RetryPolicy(sleep=clock.sleep, clock=clock, turned=lambda: turns.append(clock()))
    p.call(Flaky(failures=2), retryable)
    assert len(turns) == 4
    assert turns[1] - turns[0] == pytest.approx(clock.sleeps[0])
    assert turns[3] - turns[2] == pytest.approx(clock.sleeps[1])


def test_liveness_holds_while_one_request_retries_for_longer_than_its_window() -> None:
    """Five attempts of 200 s each (a read timeout, say) outlast a 300 s liveness window, but
    the policy tells liveness between attempts, so /healthz never sees the loop idle for long."""
    clock = Clock()
    health = Health(live_within_s=300.0, clock=clock)
    health.started()
    p = RetryPolicy(
        attempts=5, deadline_s=10_000.0, sleep=clock.sleep, clock=clock, turned=health.turned
    )
    live: list[bool] = []

    def slow_failure() -> str:
        clock.now += 200.0
        live.append(health.live()[0])
        raise ConnectionError("read timed out")

    with pytest.raises(ConnectionError):
        p.call(slow_failure, retryable)
    assert live == [True] * 5
    assert clock() - 1000.0 >= 1000.0  # longer than the window in all
