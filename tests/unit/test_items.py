"""The item format: DynamoDB's sizing rules against known sizes, the delete marker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.config import default_tables
from replicator.core.items import (
    DELETED,
    delete_marker,
    is_marker,
    item_size,
    size_bound,
    value_size,
)

NOW_S = 1_800_000_000


def test_an_item_is_the_sum_of_its_names_and_values() -> None:
    # The worked example of dyno-item-size, by the documented rules: 6+6, 6+2 ("27": two
    # significant digits, one byte, plus one), 6+6 (binary counts raw bytes, not base64).
    item = {"string": {"S": "string"}, "number": {"N": "27"}, "buffer": {"B": b"buffer"}}
    assert item_size(item) == 32


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ({"S": ""}, 0),
        ({"S": "abc"}, 3),
        ({"S": "é"}, 2),  # UTF-8 bytes, not characters
        ({"S": "😀"}, 4),
        ({"B": b"\x00\x01\x02"}, 3),
        ({"BOOL": False}, 1),
        ({"NULL": True}, 1),
        ({"SS": ["a", "bc"]}, 3),
        ({"NS": ["1", "22"]}, 4),
        ({"L": []}, 3),  # a list or map: 3 bytes whatever it holds
        ({"L": [{"S": "ab"}, {"N": "1"}]}, 3 + (1 + 2) + (1 + 2)),  # plus 1 per element
        ({"M": {}}, 3),
        ({"M": {"k": {"S": "xy"}, "é": {"BOOL": True}}}, 3 + (1 + 1 + 2) + (2 + 1 + 1)),
    ],
)
def test_value_sizes_follow_dynamodbs_rules(value: dict, size: int) -> None:
    assert value_size(value) == size


@pytest.mark.parametrize(
    ("number", "size"),
    [
        ("0", 1),
        ("7", 2),
        ("27", 2),
        ("123", 3),
        ("12345", 4),  # the backfill test's number
        ("100", 2),  # trailing zeros trimmed: one significant digit
        ("-0.00120", 2),  # sign, point and leading/trailing zeros are not significant
        ("12.50", 3),
        ("1.5E+10", 2),  # the exponent is not digits of the number
        ("9" * 38, 20),  # the most significant digits DynamoDB keeps
        ("1733011200123", 8),  # a _src_ms: 13 significant digits
    ],
)
def test_a_number_is_one_byte_per_two_significant_digits_plus_one(number: str, size: int) -> None:
    assert value_size({"N": number}) == size


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="not a DynamoDB attribute value type"):
        value_size({"X": "1"})


def test_a_delete_marker_is_the_key_the_flag_and_a_ttl_tombstone_days_away() -> None:
    mapping = default_tables()[0]
    key = {"PK": {"S": "p"}, "SK": {"S": "s"}}
    marker = delete_marker(mapping, key, NOW_S)
    assert marker == {
        **key,
        DELETED: {"BOOL": True},
        mapping.ttl_attribute: {"N": str(NOW_S + mapping.tombstone_days * 86_400)},
    }
    assert is_marker(marker)
    assert not is_marker(key) and not is_marker(None)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=20),
        st.one_of(
            st.text().map(lambda t: {"S": t}),
            st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: {"N": str(d)}),
            st.booleans().map(lambda b: {"BOOL": b}),
            st.binary().map(lambda b: {"B": b}),
        ),
        max_size=12,
    )
)
def test_the_cheap_bound_is_never_below_the_exact_size(item: dict) -> None:
    # to_item skips the exact size when the bound fits: a bound below it would let an
    # oversize item through.
    assert size_bound(item) >= item_size(item)
