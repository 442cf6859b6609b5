"""A table mapping compiled once into a per-row item builder. Pure.

``mapping.to_item`` and ``mapping.item_key`` interpret the mapping on every row: they parse
templates (cached), read a pydantic private attribute, walk the column types through a chain of
comparisons and measure the finished item again. At tens of thousands of events per second
that interpretation is most of the consumer's CPU. ``Mapper`` does it once per mapping: each
template becomes a list of steps with the column's type resolved, each column a converter for
its type, and the size bound is summed while the item is built.

Behaviour is that of ``mapping.to_item`` / ``item_key`` exactly (the same items, the same
``MappingError`` messages, raised in the same order): a converter only takes the values whose
result is evident (an ``int`` for an int column, a ``str`` for a text column) and hands every
other value to ``mapping.canonical``, which converts it or refuses it with its own message.
A mapping that uses anything the compiler does not know (a template format it does not
recognise) is served by ``mapping.to_item`` itself. tests/unit/test_mapper.py checks the two
against each other on generated rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replicator.core.items import Item, item_size
from replicator.core.mapping import (
    MAX_ITEM_BYTES,
    UNAVAILABLE,
    ColumnType,
    TableMapping,
    _compress_to_fit,
    _exact_number,
    _parsed,
    canonical,
    format_date,
    item_key,
    to_item,
)
from replicator.errors import MappingError

Row = dict[str, Any]
Texts = dict[str, str]
_Canon = Callable[[Any], str]

_INTEGERS = ("int", "bigint")
_MICROS_PER_DAY = 86_400_000_000
# Template steps: what a field's text is made of its column's canonical text.
_WHOLE, _DATE, _PAD, _PAD_REFUSED = 0, 1, 2, 3


class Unsupported(Exception):
    """The mapping uses something the compiler does not know: use mapping.to_item."""


# --- canonical texts, fast where the answer is evident ---------------------------------------

_days: dict[int, str] = {}


def _day(days: int) -> str:
    """format_date, memoised: a stream of logs spans few days."""
    text = _days.get(days)
    if text is None:
        if len(_days) >= 4096:
            _days.clear()
        text = _days[days] = format_date(days)
    return text


def _canon(column: str, kind: ColumnType) -> _Canon:
    """``canonical(column, kind, ·)`` for one column, with the common case inlined."""

    def slow(value: Any) -> str:
        return canonical(column, kind, value)

    if kind in _INTEGERS:

        def integer(value: Any) -> str:
            return str(value) if type(value) is int else slow(value)

        return integer
    if kind in ("text", "json"):

        def text(value: Any) -> str:
            return value if type(value) is str else slow(value)

        return text
    if kind == "bool":

        def boolean(value: Any) -> str:
            if value is True:
                return "true"
            if value is False:
                return "false"
            return slow(value)

        return boolean
    if kind == "timestamp":

        def timestamp(value: Any) -> str:
            if type(value) is int:
                # format_timestamp without a datetime per row; out of range (a day that
                # date cannot hold) goes the slow way, which words the refusal.
                days, rest = divmod(value, _MICROS_PER_DAY)
                try:
                    day = _day(days)
                except (OverflowError, ValueError):
                    return slow(value)
                seconds, micro = divmod(rest, 1_000_000)
                hours, seconds = divmod(seconds, 3600)
                minutes, seconds = divmod(seconds, 60)
                return f"{day}T{hours:02d}:{minutes:02d}:{seconds:02d}.{micro:06d}Z"
            return slow(value)

        return timestamp
    if kind == "date":

        def date(value: Any) -> str:
            if type(value) is int:
                try:
                    return _day(value)
                except (OverflowError, ValueError):
                    pass
            return slow(value)

        return date
    return slow  # decimal: the exactness checks are the work


# --- templates -------------------------------------------------------------------------------


class _Template:
    """One template, its steps with each column's type and format resolved."""

    __slots__ = ("steps", "template")

    def __init__(self, template: str, types: dict[str, ColumnType]) -> None:
        self.template = template
        steps: list[tuple[str, str | None, _Canon | None, int, str]] = []
        for literal, name, spec in _parsed(template):
            if name is None:
                steps.append((literal, None, None, _WHOLE, ""))
                continue
            kind = types[name]
            if not spec:
                mode, fmt = _WHOLE, ""
            elif spec == "date":
                mode, fmt = _DATE, ""
            elif spec.startswith("0") and spec[1:].isdigit():
                mode, fmt = (_PAD, f"{spec}d") if kind in _INTEGERS else (_PAD_REFUSED, "")
            else:
                raise Unsupported(f"template {template!r}: format {spec!r}")
            steps.append((literal, name, _canon(name, kind), mode, fmt))
        self.steps = tuple(steps)

    def render(self, row: Row, texts: Texts) -> str | None:
        """mapping.render: None when a column it names is NULL."""
        out = []
        for literal, name, canon, mode, fmt in self.steps:
            out.append(literal)
            if name is None:
                continue
            value = row.get(name)
            if value is None:
                return None
            if value == UNAVAILABLE:
                raise MappingError(
                    f"template {self.template!r} needs {name!r}, which the source did not "
                    "send (TOAST); use REPLICA IDENTITY FULL"
                )
            whole = texts.get(name)
            if whole is None:
                whole = texts[name] = canon(value)  # type: ignore[misc]
            if mode == _WHOLE:
                out.append(whole)
            elif mode == _DATE:
                out.append(whole[:10])
            elif mode == _PAD:
                out.append(format(value if type(value) is int else int(whole), fmt))
            else:
                raise MappingError(
                    f"template {self.template!r}: zero-padding needs an integer column"
                )
        return "".join(out)


# --- the mapper ------------------------------------------------------------------------------

# Columns: how an attribute value is made of the column's canonical text.
_TEXT, _INT, _S, _N, _BOOL = 0, 1, 2, 3, 4
_CODES = {"text": _TEXT, "json": _TEXT, "int": _INT, "bigint": _INT, "decimal": _N, "bool": _BOOL}


class Mapper:
    """mapping.to_item and mapping.item_key for one mapping, compiled."""

    __slots__ = (
        "_columns",
        "_compiled",
        "_derived",
        "_fixed_size",
        "_keys",
        "_retention",
        "column_names",
        "key_attributes",
        "mapping",
    )

    def __init__(self, mapping: TableMapping) -> None:
        self.mapping = mapping
        self.key_attributes = tuple(mapping.key_attributes)
        self.column_names = frozenset(c.name for c in mapping.columns)
        try:
            self._compile(mapping)
            self._compiled = True
        except (Unsupported, KeyError):  # KeyError: a template names a column of no type
            self._compiled = False

    def _compile(self, mapping: TableMapping) -> None:
        types = mapping.column_types()
        templates: dict[str, _Template] = {}

        def template(text: str) -> _Template:
            if text not in templates:
                templates[text] = _Template(text, types)
            return templates[text]

        self._keys = tuple(
            (k.attribute, k.type == "N", template(k.template))
            for k in filter(None, [mapping.partition_key, mapping.sort_key])
        )
        columns = []
        for c in mapping.columns:
            code = _CODES.get(c.type, _S)  # timestamps and dates are S
            columns.append((c.name, c.attribute, code, _canon(c.name, c.type)))
        self._columns = tuple(columns)
        self._derived = tuple(
            (
                d.attribute,
                d.type == "N",
                tuple(d.when_set),
                tuple(d.when_equal.items()),
                template(d.template),
            )
            for d in mapping.derived
        )
        retention = mapping.retention
        self._retention = (
            (retention.column, retention.days * 86_400, mapping.ttl_attribute)
            if retention
            else None
        )
        # Every attribute name the item can hold, each with one byte for a value's overhead:
        # with the values' text sizes added while the item is built, an upper bound of its
        # size (mapping.item_size) that needs no second pass over the item.
        names = [a for a, *_ in self._keys] + [c[1] for c in columns]
        names += [d[0] for d in self._derived] + [mapping.ttl_attribute]
        self._fixed_size = sum(len(n.encode()) + 1 for n in set(names))

    def item_key(self, row: Row, texts: Texts | None = None) -> Item:
        """mapping.item_key(mapping, row)."""
        if not self._compiled:
            return item_key(self.mapping, row, texts)
        if texts is None:
            texts = {}
        key: Item = {}
        for attribute, numeric, tpl in self._keys:
            text = tpl.render(row, texts)
            if not text:
                raise MappingError(f"key attribute {attribute!r} is empty or NULL for this row")
            key[attribute] = {"N": _exact_number(attribute, text)} if numeric else {"S": text}
        return key

    def to_item(self, row: Row) -> tuple[Item, set[str]]:
        """mapping.to_item(mapping, row)."""
        if not self._compiled:
            return to_item(self.mapping, row)
        texts: Texts = {}
        rendered: dict[int, str] = {}  # templates already rendered for this row, by identity
        item: Item = {}
        size = self._fixed_size
        for attribute, numeric, tpl in self._keys:
            text = tpl.render(row, texts)
            if not text:
                raise MappingError(f"key attribute {attribute!r} is empty or NULL for this row")
            rendered[id(tpl)] = text
            if numeric:
                text = _exact_number(attribute, text)
                item[attribute] = {"N": text}
            else:
                item[attribute] = {"S": text}
            size += len(text) if text.isascii() else 4 * len(text)
        unavailable: set[str] = set()
        get = row.get
        for name, attribute, code, canon in self._columns:
            value = get(name)
            if value is None:
                continue
            if value == UNAVAILABLE:
                unavailable.add(attribute)
                continue
            if code == _TEXT:
                text = value if type(value) is str else canon(value)
                item[attribute] = {"S": text}
                size += len(text) if text.isascii() else 4 * len(text)
            elif code == _S:
                text = texts.get(name) or canon(value)
                item[attribute] = {"S": text}
                # An upper bound of the UTF-8 length that costs no encoding (isascii is O(1)).
                size += len(text) if text.isascii() else 4 * len(text)
            elif code == _INT:
                text = str(value) if type(value) is int else canon(value)
                item[attribute] = {"N": text}
                size += len(text)
            elif code == _N:
                text = canon(value)
                item[attribute] = {"N": text}
                size += len(text)
            else:
                if type(value) is not bool:
                    canon(value)  # refuses a non-boolean as mapping.canonical does
                item[attribute] = {"BOOL": value}
        for attribute, numeric, when_set, when_equal, tpl in self._derived:
            if not _conditions_hold(get, when_set, when_equal):
                continue
            text = rendered.get(id(tpl))
            if text is None:
                text = tpl.render(row, texts)
                if text is None:
                    continue
                rendered[id(tpl)] = text
            if numeric:
                number = _exact_number(attribute, text)
                item[attribute] = {"N": number}
                size += len(number)
            else:
                item[attribute] = {"S": text}
                size += len(text) if text.isascii() else 4 * len(text)
        if self._retention is not None:
            column, seconds, ttl = self._retention
            micros = get(column)
            if isinstance(micros, int) and not isinstance(micros, bool):
                item[ttl] = {"N": str(micros // 1_000_000 + seconds)}
                size += len(item[ttl]["N"])
        if size <= MAX_ITEM_BYTES:  # the common case: no encoding needed to know
            return item, unavailable
        exact = item_size(item)
        if exact > MAX_ITEM_BYTES and self.mapping.large_items == "compress":
            exact = _compress_to_fit(self.mapping, item, exact)
        if exact > MAX_ITEM_BYTES:
            raise MappingError(f"item is {exact} bytes, over DynamoDB's 400 KB limit")
        return item, unavailable


def _conditions_hold(
    get: Callable[[str], Any], when_set: tuple[str, ...], when_equal: tuple[tuple[str, Any], ...]
) -> bool:
    for name in when_set:
        if get(name) is None:
            return False
    for name, wanted in when_equal:
        if get(name) == wanted:  # == as mapping's all(...), not != (a type may differ there)
            continue
        return False
    return True


# One compiled mapper per mapping object. Mappings are frozen and few (a settings tree holds
# them for the process's life); the entry holds the mapping itself, so its id cannot be reused
# by another object while the entry exists.
_mappers: dict[int, tuple[TableMapping, Mapper]] = {}


def mapper(mapping: TableMapping) -> Mapper:
    entry = _mappers.get(id(mapping))
    if entry is not None and entry[0] is mapping:
        return entry[1]
    if len(_mappers) >= 256:
        _mappers.clear()
    compiled = Mapper(mapping)
    _mappers[id(mapping)] = (mapping, compiled)
    return compiled
