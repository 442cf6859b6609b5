"""Enrichment lookups retry a database they cannot reach by the one retry policy."""

from __future__ import annotations

import socket

import pytest

from replicator.config import default_tables
from replicator.errors import LookupUnavailableError
from replicator.stream.lookup import Lookups
from replicator.stream.retry import RetryPolicy


def test_an_unreachable_lookup_database_is_retried_by_the_policy() -> None:
    with socket.socket() as s:  # a port nobody listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (payments,) = [m for m in default_tables() if m.lookups]
    sleeps: list[float] = []
    turns: list[int] = []
    retry = RetryPolicy(attempts=3, sleep=sleeps.append, turned=lambda: turns.append(1))
    lookups = Lookups(f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2", retry=retry)
    with pytest.raises(LookupUnavailableError, match="PostgreSQL unreachable"):
        lookups.fill(payments, [{"loanid": 1}])
    assert len(sleeps) == 2 and len(turns) == 4
    assert all(0.0 <= w <= min(5.0, 0.05 * 2**n) for n, w in enumerate(sleeps))
