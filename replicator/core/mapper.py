"""A table mapping compiled once into a per-row item builder. Pure.

``mapping.to_item`` and ``mapping.item_key`` interpret the mapping on every row: they parse
templates (cached), read a pydantic private attribute, walk the column types through a chain of
comparisons and measure the finished item again. At tens of thousands of events per second
that interpretation was most of the consumer's CPU. ``Mapper`` does it once per mapping: the
mapping becomes the source of a ``to_item`` and an ``item_key`` function with every template,
column and condition written out (``Mapper(m).source`` shows it), each column converted by a
function for its type, and the 400 KB size bound summed while the item is built.

Behaviour is that of ``mapping.to_item`` / ``item_key`` exactly (the same items, the same
``MappingError`` messages, raised in the same order): a converter only takes the values whose
result is evident (an ``int`` for an int column, a ``str`` for a text column) and hands every
other value to ``mapping.canonical``, which converts it or refuses it with its own message.
A mapping that uses anything the compiler does not know (a template format it does not
recognise) is served by ``mapping.to_item`` itself. tests/unit/test_mapper.py checks the two
against each other on generated rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from replicator.core.items import Item
from replicator.core.mapping import (
    MAX_ITEM_BYTES,
    SHARD,
    UNAVAILABLE,
    ColumnType,
    TableMapping,
    _exact_number,
    _parsed,
    canonical,
    fit,
    format_date,
    item_key,
    known_format,
    template_fields,
    to_item,
)
from replicator.errors import MappingError

Row = dict[str, Any]
Texts = dict[str, str]
_Canon = Callable[[Any], str]

_INTEGERS = ("int", "bigint")
_MICROS_PER_DAY = 86_400_000_000


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


# --- code generation -------------------------------------------------------------------------
#
# The mapping becomes the source text of two functions, to_item(row) and item_key(row), in
# which every template, column, condition and attribute name is a constant: no loop over the
# mapping, no type dispatch and no tuple unpacking per row. Names and values reach the source
# only through repr() (string literals) or the namespace the source runs in.

# Columns: how an attribute value is made of the column's canonical text.
_TEXT, _INT, _S, _N, _BOOL = 0, 1, 2, 3, 4
_CODES = {"text": _TEXT, "json": _TEXT, "int": _INT, "bigint": _INT, "decimal": _N, "bool": _BOOL}


def _toast(template: str, name: str) -> MappingError:
    return MappingError(
        f"template {template!r} needs {name!r}, which the source did not "
        "send (TOAST); use REPLICA IDENTITY FULL"
    )


def _empty(attribute: str) -> MappingError:
    return MappingError(f"key attribute {attribute!r} is empty or NULL for this row")


def _padding(template: str) -> MappingError:
    return MappingError(f"template {template!r}: zero-padding needs an integer column")


def _unshardable(template: str) -> MappingError:
    return MappingError(f"template {template!r}: a shard suffix needs an integer column")


class _Source:
    """The source text being written, and the constants it refers to."""

    def __init__(self, types: dict[str, ColumnType], shards: int = 1) -> None:
        self.types = types
        self.shards = shards
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {
            "UNAVAILABLE": UNAVAILABLE,
            "_exact_number": _exact_number,
            "_toast": _toast,
            "_empty": _empty,
            "_padding": _padding,
            "_unshardable": _unshardable,
        }
        self.locals: dict[str, str] = {}  # column -> local memoising its canonical text
        self.converters: dict[str, str] = {}  # column -> name of its converter

    def const(self, value: Any) -> str:
        """A name in the namespace bound to ``value``."""
        name = f"K{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def canon(self, column: str) -> str:
        """The name of a column's converter (mapping.canonical, fast where evident)."""
        if column not in self.converters:
            self.converters[column] = self.const(_canon(column, self.types[column]))
        return self.converters[column]

    def local(self, column: str) -> str:
        """The local variable memoising a column's canonical text for this row."""
        return self.locals.setdefault(column, f"w{len(self.locals)}")

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _emit_template(src: _Source, template: str, indent: int, target: str, on_null: str) -> int:
    """Source that sets ``target`` to the rendered template (mapping.render), where a NULL
    column runs ``on_null`` (a raise) or, when it is empty, leaves the rest undone with
    ``target`` None. Returns the indent at which ``target`` is set."""
    parts: list[str] = []
    if not on_null:
        src.emit(indent, f"{target} = None")
    for literal, name, spec in _parsed(template):
        if literal:
            parts.append(repr(literal))
        if name is None:
            continue
        kind = src.types[name]  # KeyError: no such column, the mapping is not compiled
        if spec and not known_format(spec):
            raise Unsupported(f"template {template!r}: format {spec!r}")
        memo, canon = src.local(name), src.canon(name)
        src.emit(indent, f"v = get({name!r})")
        if on_null:
            src.emit(indent, f"if v is None: {on_null}")
        else:
            src.emit(indent, "if v is not None:")
            indent += 1
        src.emit(indent, f"if v == UNAVAILABLE: raise _toast({template!r}, {name!r})")
        src.emit(indent, f"if {memo} is None: {memo} = {canon}(v)")
        if not spec:
            parts.append(memo)
        elif spec == "date":
            parts.append(f"{memo}[:10]")
        elif spec == SHARD and kind in _INTEGERS:
            # The column's value mod shards (Python's %: 0..shards-1 for negative values too).
            part = f"p{len(src.lines)}"
            src.emit(indent, f"{part} = str((v if type(v) is int else int({memo})) % {src.shards})")
            parts.append(part)
        elif spec == SHARD:
            src.emit(indent, f"raise _unshardable({template!r})")
            return indent
        elif kind in _INTEGERS:
            part = f"p{len(src.lines)}"
            src.emit(
                indent, f"{part} = format(v if type(v) is int else int({memo}), {spec + 'd'!r})"
            )
            parts.append(part)
        else:
            src.emit(indent, f"raise _padding({template!r})")
            return indent
    src.emit(indent, f"{target} = {' + '.join(parts) or repr('')}")
    return indent


def _emit_keys(src: _Source, mapping: TableMapping, indent: int) -> list[tuple[str, str, str]]:
    """Source of item_key's part: (attribute, type, local of its text) per key."""
    keys = []
    for n, attr in enumerate(filter(None, [mapping.partition_key, mapping.sort_key])):
        text = f"k{n}"
        _emit_template(src, attr.template, indent, text, f"raise _empty({attr.attribute!r})")
        src.emit(indent, f"if not {text}: raise _empty({attr.attribute!r})")
        if attr.type == "N":
            src.emit(indent, f"{text} = _exact_number({attr.attribute!r}, {text})")
        keys.append((attr.attribute, attr.type, text))
    return keys


def _size_of(text: str, kind: str) -> str:
    """Source adding a value's bound to ``size``: UTF-8 bytes at most (isascii is O(1)), a
    number at most one byte per character (the fixed part counts its extra byte)."""
    if kind == "N":
        return f"size += len({text})"
    return f"size += len({text}) if {text}.isascii() else 4 * len({text})"


def _compile(mapping: TableMapping) -> tuple[Callable[..., Any], ...]:
    types = mapping.column_types()
    src = _Source(types, mapping.shards)
    used = [name for a in _templated(mapping) for name, _ in template_fields(a.template)]
    names = [
        *[a.attribute for a in _templated(mapping)],
        *[c.attribute for c in mapping.columns],
        mapping.ttl_attribute,
    ]
    # Every attribute name the item can hold, each with one byte for a value's overhead: with
    # the values' text sizes added while the item is built, an upper bound of the item's size
    # (mapping.item_size) that needs no second pass over the item.
    fixed = sum(len(n.encode()) + 1 for n in set(names))

    # item_key(row)
    src.emit(0, "def item_key(row):")
    src.emit(1, "get = row.get")
    for name in dict.fromkeys(used):
        src.emit(1, f"{src.local(name)} = None")
    keys = _emit_keys(src, mapping, 1)
    src.emit(1, "return {" + ", ".join(f"{a!r}: {{{t!r}: {v}}}" for a, t, v in keys) + "}")

    # to_item(row)
    src.emit(0, "def to_item(row):")
    src.emit(1, "get = row.get")
    for name in dict.fromkeys(used):
        src.emit(1, f"{src.local(name)} = None")
    keys = _emit_keys(src, mapping, 1)
    src.emit(1, "item = {" + ", ".join(f"{a!r}: {{{t!r}: {v}}}" for a, t, v in keys) + "}")
    src.emit(
        1,
        f"size = {fixed} + "
        + " + ".join(f"(len({v}) if {v}.isascii() else 4 * len({v}))" for _, _, v in keys),
    )
    src.emit(1, "unavailable = set()")
    for c in mapping.columns:
        code = _CODES.get(c.type, _S)  # timestamps and dates are S
        canon = src.canon(c.name)
        src.emit(1, f"v = get({c.name!r})")
        src.emit(1, "if v is not None:")
        src.emit(2, f"if v == UNAVAILABLE: unavailable.add({c.attribute!r})")
        src.emit(2, "else:")
        if code == _TEXT:
            src.emit(3, f"x = v if type(v) is str else {canon}(v)")
        elif code == _INT:
            src.emit(3, f"x = str(v) if type(v) is int else {canon}(v)")
        elif code == _N:
            src.emit(3, f"x = {canon}(v)")
        elif code == _S and c.name in src.locals:
            memo = src.locals[c.name]
            src.emit(3, f"x = {memo} if {memo} is not None else {canon}(v)")
        elif code == _S:
            src.emit(3, f"x = {canon}(v)")
        if code == _BOOL:
            src.emit(3, f"if type(v) is not bool: {canon}(v)")  # refuses it as canonical does
            src.emit(3, f"item[{c.attribute!r}] = {{'BOOL': v}}")
            continue
        kind = "S" if code in (_TEXT, _S) else "N"
        src.emit(3, f"item[{c.attribute!r}] = {{{kind!r}: x}}")
        src.emit(3, _size_of("x", kind))
    rendered = {}  # template -> local holding it, for the keys (always rendered first)
    for (_, _, text), attr in zip(
        keys, filter(None, [mapping.partition_key, mapping.sort_key]), strict=True
    ):
        if attr.type == "S":
            rendered.setdefault(attr.template, text)
    for d in mapping.derived:
        conditions = [f"get({n!r}) is not None" for n in d.when_set]
        conditions += [f"get({n!r}) == {src.const(v)}" for n, v in d.when_equal.items()]
        indent = 1
        if conditions:
            src.emit(1, f"if {' and '.join(conditions)}:")
            indent = 2
        if d.template in rendered:
            src.emit(indent, f"t = {rendered[d.template]}")
        else:
            _emit_template(src, d.template, indent, "t", "")
            src.emit(indent, "if t is not None:")
            indent += 1
        if d.type == "N":
            src.emit(indent, f"t = _exact_number({d.attribute!r}, t)")
        src.emit(indent, f"item[{d.attribute!r}] = {{{d.type!r}: t}}")
        src.emit(indent, _size_of("t", d.type))
    if mapping.retention is not None:
        seconds = mapping.retention.days * 86_400
        src.emit(1, f"m = get({mapping.retention.column!r})")
        src.emit(1, "if isinstance(m, int) and not isinstance(m, bool):")
        src.emit(2, f"x = str(m // 1_000_000 + {seconds})")
        src.emit(2, f"item[{mapping.ttl_attribute!r}] = {{'N': x}}")
        src.emit(2, "size += len(x)")
    src.emit(1, f"if size <= {MAX_ITEM_BYTES}: return item, unavailable")
    src.emit(1, "return _oversize(item, unavailable)")

    # key_of(item): the item's key attributes
    src.emit(0, "def key_of(item):")
    src.emit(1, "return {" + ", ".join(f"{a!r}: item[{a!r}]" for a, _, _ in keys) + "}")

    src.namespace["_oversize"] = functools.partial(_oversize, mapping)
    text = "\n".join(src.lines) + "\n"
    code = compile(text, f"<mapper {mapping.name}>", "exec")
    exec(code, src.namespace)  # our own source: names and values only through repr()
    namespace = src.namespace
    return namespace["to_item"], namespace["item_key"], namespace["key_of"], text


def _templated(mapping: TableMapping) -> list[Any]:
    return [*filter(None, [mapping.partition_key, mapping.sort_key]), *mapping.derived]


def _oversize(mapping: TableMapping, item: Item, unavailable: set[str]) -> tuple[Item, set[str]]:
    """Over the cheap bound: as mapping.to_item does (exact size, compression, refusal)."""
    fit(mapping, item)
    return item, unavailable


# --- the mapper ------------------------------------------------------------------------------


class Mapper:
    """mapping.to_item and mapping.item_key for one mapping, compiled."""

    __slots__ = (
        "_compiled",
        "column_names",
        "item_key",
        "key_attributes",
        "key_columns",
        "key_of",
        "mapping",
        "source",
        "to_item",
    )

    def __init__(self, mapping: TableMapping) -> None:
        self.mapping = mapping
        self.key_attributes = tuple(mapping.key_attributes)
        self.column_names = frozenset(c.name for c in mapping.columns)
        # The source columns the item's key is made of; for a lookup column, the column it
        # is looked up by (a miss then parks the event, as for the new row).
        using = {lk.column: lk.using for lk in mapping.lookups}
        self.key_columns = frozenset(
            using.get(name, name)
            for attr in filter(None, [mapping.partition_key, mapping.sort_key])
            for _, name, _ in _parsed(attr.template)
            if name is not None
        )
        self.to_item: Callable[[Row], tuple[Item, set[str]]]
        self.item_key: Callable[[Row], Item]
        self.key_of: Callable[[Item], Item]  # the key attributes of an item
        try:
            self.to_item, self.item_key, self.key_of, self.source = _compile(mapping)
            self._compiled = True
        except (Unsupported, KeyError, ValueError):  # KeyError: a template names no column
            self.to_item = functools.partial(to_item, mapping)
            self.item_key = functools.partial(item_key, mapping)
            self.key_of = lambda item: {name: item[name] for name in self.key_attributes}
            self.source = ""
            self._compiled = False


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
