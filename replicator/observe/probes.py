"""What the probes read: the consumer loop's liveness and readiness, written by the loop
(plain attribute writes) and read by /healthz, /readyz and the status page."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

_REASON_CHARS = 200


class Health:
    """What the probes read; written by the consumer loop (plain attribute writes)."""

    def __init__(
        self, live_within_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.live_within_s = live_within_s
        self.clock = clock
        self.running = False
        self.last_turn = clock()
        self.joined = False  # the group has assigned this consumer (maybe nothing)
        self.partitions = 0
        self.write_error: str | None = None

    def started(self) -> None:
        self.running = True
        self.last_turn = self.clock()

    def stopped(self) -> None:
        self.running = False

    def turned(self) -> None:
        self.last_turn = self.clock()

    def assignment(self, joined: bool, partitions: int) -> None:
        self.joined = joined
        self.partitions = partitions

    def write_ok(self) -> None:
        self.write_error = None

    def write_failed(self, error: str) -> None:
        self.write_error = error[:_REASON_CHARS]

    def live(self) -> tuple[bool, dict[str, Any]]:
        idle = self.clock() - self.last_turn
        if not self.running:
            return False, {"live": False, "reason": "the consumer loop is not running"}
        if idle > self.live_within_s:
            return False, {
                "live": False,
                "reason": f"the consumer loop has not turned for {idle:.0f} s",
            }
        return True, {"live": True}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        if not self.joined:
            return False, {"ready": False, "reason": "no partition assignment from the group yet"}
        if self.write_error is not None:
            return False, {
                "ready": False,
                "reason": f"last DynamoDB write failed: {self.write_error}",
                "partitions": self.partitions,
            }
        return True, {"ready": True, "partitions": self.partitions}
