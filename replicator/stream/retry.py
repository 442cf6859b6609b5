"""The one retry policy of every write and lookup: full-jitter exponential backoff with a cap,
a number of attempts, and a deadline per request across its attempts (settings: dynamodb.*).

Used by the wire client and the sink's boto3 client for each request, by the sink for a key
move's cancelled transaction, by the enrichment lookups, and by the pipeline between attempts
of a whole batch. Between attempts it reports the loop at work (``turned``: /healthz stays
live while a retry is within its bounds). Sleep and clock are injectable, so tests never wait.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

from replicator.config import DynamoSettings

T = TypeVar("T")
# 2**60 times any base is far past any cap; a batch retried for days must not overflow a float.
_MAX_DOUBLINGS = 60


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10  # per request, the first one included
    base_s: float = 0.05  # the first retry waits up to this long
    cap_s: float = 5.0  # no wait is longer; the interval of a systemic batch retry
    deadline_s: float = 60.0  # no retry of one request starts later than this after its first
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    turned: Callable[[], None] = _nothing  # called between attempts: the loop is at work

    @classmethod
    def from_settings(
        cls, dynamodb: DynamoSettings, turned: Callable[[], None] = _nothing
    ) -> RetryPolicy:
        return cls(
            attempts=dynamodb.max_attempts,
            base_s=dynamodb.backoff_base_s,
            cap_s=dynamodb.backoff_cap_s,
            deadline_s=dynamodb.request_deadline_s,
            turned=turned,
        )

    def backoff(self, retry: int) -> float:
        """The wait before retry ``retry`` (0: the first), full jitter: uniform over
        [0, min(cap, base * 2**retry)], so that many clients refused at once spread out."""
        return random.uniform(0.0, min(self.cap_s, self.base_s * 2 ** min(retry, _MAX_DOUBLINGS)))

    def next_wait(self, retry: int, started: float) -> float | None:
        """The wait before retry ``retry`` of a request first tried at ``started`` (by
        ``clock``), or None when its attempts or its deadline are spent."""
        if retry + 1 >= self.attempts:
            return None
        wait = self.backoff(retry)
        if self.clock() - started + wait > self.deadline_s:
            return None
        return wait

    def wait_for(self, retry: int, started: float) -> bool:
        """Pause before retry ``retry`` and say True, or say False at once when the request's
        attempts or deadline are spent."""
        wait = self.next_wait(retry, started)
        if wait is None:
            return False
        self.pause(wait)
        return True

    def pause(self, seconds: float) -> None:
        """Wait between two attempts, telling liveness the loop is at work on both sides."""
        self.turned()
        self.sleep(seconds)
        self.turned()

    def call(
        self,
        attempt: Callable[[], T],
        retryable: Callable[[BaseException], bool],
        started: float | None = None,
    ) -> T:
        """``attempt()`` until it returns, raises what ``retryable`` refuses, or the attempts or
        the deadline are spent (then its last error is raised). ``started``: when the first
        attempt began, if it was made before this call."""
        began = self.clock() if started is None else started
        waits: dict[int, float | None] = {}

        def wait(state: RetryCallState) -> float:
            waits[state.attempt_number] = self.next_wait(state.attempt_number - 1, began)
            return waits[state.attempt_number] or 0.0

        def stop(state: RetryCallState) -> bool:  # tenacity asks for the wait first
            return waits.get(state.attempt_number) is None

        retrying = Retrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(retryable),
            sleep=self.pause,
            reraise=True,
        )
        return retrying(attempt)
