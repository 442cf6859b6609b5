"""Times given on the command line and in read parameters: ISO 8601, UTC unless they say
otherwise."""

from __future__ import annotations

import datetime as dt


def utc_moment(text: str) -> dt.datetime:
    """An ISO-8601 date or time as a naive UTC datetime (a date means its midnight; an offset
    is converted). Raises ValueError when ``text`` is neither."""
    when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when
