"""Times from the command line and read parameters: ISO 8601, UTC unless they say otherwise."""

from __future__ import annotations

import datetime as dt

import pytest

from replicator.core.times import utc_moment


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-15", dt.datetime(2024, 1, 15)),
        ("2024-01-15T10:30:00", dt.datetime(2024, 1, 15, 10, 30)),
        ("2024-01-15T10:30:00Z", dt.datetime(2024, 1, 15, 10, 30)),
        (" 2024-01-15T12:30:00+02:00 ", dt.datetime(2024, 1, 15, 10, 30)),
    ],
)
def test_a_time_is_naive_utc(text: str, expected: dt.datetime) -> None:
    assert utc_moment(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "15/01/2024"])
def test_what_is_not_a_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        utc_moment(text)
