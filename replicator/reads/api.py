"""The HTTP read API (standard library, read-only): the read path's access patterns and the
current phases as JSON, for applications in any language, with an OpenAPI 3.1 description at
``/openapi.json``.

- Lists answer ``{"items": [...], "next": cursor | null}``; pass ``next`` back as ``cursor`` for
  the following page. A single item answers the row itself, or 404.
- Numbers are JSON numbers with their exact decimal text (amounts are never floats on our
  side; read them as decimals). Timestamps are fixed-width UTC text, dates ``YYYY-MM-DD``; a NULL
  column is an absent key.
- Bad parameters answer 400, an unknown path or item 404, any method but GET 405, a store that
  does not answer 503; every error is ``{"error": code, "message": text}``.
- The ``X-Read-Source`` header names the store that served the answer (postgres or dynamodb).

It binds ``reads.host`` (127.0.0.1 unless configured) and serves from one thread per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.errors import ReplicatorError
from replicator.reads.patterns import Pattern, QueryError, StoreError, catalog
from replicator.reads.router import ReadPath
from replicator.reads.rows import Page, RowShape

log = structlog.get_logger("replicator.reads.api")


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query"]
    kind: Literal["integer", "string", "date", "timestamp"]
    description: str
    required: bool = True
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    path: str  # with one {placeholder}
    pattern: str  # the declared pattern's name
    summary: str
    row: str  # the row schema's name in components
    params: tuple[Param, ...]  # the pattern's value, then start and end, in order
    single: bool = False
    noun: str = "row"  # of a single row's 404: "no log with id 5"


def row_schema_name(mapping: TableMapping) -> str:
    return f"{mapping.name}Row"


def _attribute(mapping: TableMapping, column: str) -> str:
    """The attribute a column is stored as (a lookup column: the key that is just it)."""
    for c in mapping.columns:
        if c.name == column:
            return c.attribute
    for key in filter(None, [mapping.partition_key, mapping.sort_key]):
        if key.template == f"{{{column}}}":
            return key.attribute
    return column


def route_of(p: Pattern) -> Route:
    """A declared pattern's route: its parameter in the path, its range in the query."""
    decl = p.decl
    column = _attribute(p.mapping, decl.param.column)
    kind: Literal["integer", "string", "date"] = "string"
    description = decl.param.description or column
    if p.param_type in ("int", "bigint"):
        kind = "integer"
        bits = 64 if p.param_type == "bigint" else 32
        description = decl.param.description or f"{column} ({bits}-bit integer)"
    elif p.param_type == "date":
        kind = "date"
    params = [Param(decl.param.name, "path", kind, description, choices=tuple(decl.param.choices))]
    if decl.range is not None:
        required = decl.range.required
        if p.range_type == "timestamp":
            params += [
                Param("start", "query", "timestamp",
                      "from this time on (included); a date = midnight", required),
                Param("end", "query", "timestamp",
                      "up to this time (excluded); a date = midnight", required),
            ]  # fmt: skip
        else:
            params += [
                Param("start", "query", "date", "from this date on (included)", required),
                Param("end", "query", "date", "up to this date (included)", required),
            ]
    return Route(decl.path, decl.name, decl.summary, row_schema_name(p.mapping), tuple(params),
                 decl.single, decl.cli_name)  # fmt: skip


def routes(settings: Settings) -> tuple[Route, ...]:
    """The routes of every declared pattern, in the mappings' order."""
    return tuple(route_of(p) for p in catalog(settings).values())


# --- JSON -----------------------------------------------------------------------------------


def to_json(value: Any) -> bytes:
    """JSON text with Decimals as exact JSON numbers (the json module would need floats)."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode()


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} has no JSON form")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


# --- OpenAPI --------------------------------------------------------------------------------

_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"


def _row_schema(mapping: TableMapping, description: str) -> dict[str, Any]:
    shape = RowShape.of(mapping)
    props: dict[str, Any] = {}
    for attribute, kind in shape.kinds.items():
        if kind in ("int", "bigint"):
            props[attribute] = {"type": "integer"}
        elif kind == "decimal":
            props[attribute] = {
                "type": "number",
                "description": "exact decimal (read it as a decimal, not a float)",
            }
        elif kind == "bool":
            props[attribute] = {"type": "boolean"}
        elif kind == "timestamp":
            props[attribute] = {"type": "string", "pattern": _TIMESTAMP}
        elif kind == "date":
            props[attribute] = {"type": "string", "pattern": _DATE}
        else:
            props[attribute] = {"type": "string"}
    columns = {c.name: c.attribute for c in mapping.columns}
    required = [*mapping.key_attributes, *(columns[p] for p in mapping.primary_key)]
    return {
        "type": "object",
        "description": description + " A NULL column is an absent property.",
        "properties": props,
        "required": list(dict.fromkeys(required)),
        "additionalProperties": False,
    }


def _param_schema(param: Param) -> dict[str, Any]:
    if param.kind == "integer":
        return {"type": "integer"}
    if param.kind == "date":
        return {"type": "string", "format": "date", "pattern": _DATE}
    if param.kind == "timestamp":
        return {
            "type": "string",
            "description": "a date (midnight) or an ISO-8601 time; no offset means UTC",
            "examples": ["2024-01-15", "2024-01-15T10:30:00Z"],
        }
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if param.choices:
        schema["enum"] = list(param.choices)
    return schema


def openapi(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API (JSON Schema 2020-12 schemas)."""
    limits = settings.reads

    def error(text: str) -> dict[str, Any]:
        return {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    paths: dict[str, Any] = {}
    for route in routes(settings):
        parameters = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "description": p.description,
                "schema": _param_schema(p),
            }
            for p in route.params
        ]
        if route.single:
            ok: dict[str, Any] = {"$ref": f"#/components/schemas/{route.row}"}
            responses = {
                "200": {"description": "the row", "content": {"application/json": {"schema": ok}}},
                "404": error("no such row"),
            }
        else:
            parameters += [
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "rows per page",
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": limits.max_page_size,
                        "default": limits.default_page_size,
                    },
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "`next` of the previous page (opaque)",
                    "schema": {"type": "string"},
                },
            ]
            page = {
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {"$ref": f"#/components/schemas/{route.row}"},
                    },
                    "next": {
                        "type": ["string", "null"],
                        "description": "cursor of the next page; null on the last page",
                    },
                },
                "required": ["items", "next"],
                "additionalProperties": False,
            }
            responses = {
                "200": {
                    "description": "one page",
                    "content": {"application/json": {"schema": page}},
                }
            }
        responses["200"]["headers"] = {
            "X-Read-Source": {
                "description": "the store that answered",
                "schema": {"enum": ["postgres", "dynamodb"]},
            }
        }
        responses |= {
            "400": error("a parameter is invalid"),
            "503": error("the store the table's phase reads from does not answer"),
        }
        paths[route.path] = {
            "get": {
                "operationId": route.pattern,
                "summary": route.summary,
                "parameters": parameters,
                "responses": responses,
            }
        }
    paths["/phases"] = {
        "get": {
            "operationId": "phases",
            "summary": "The current phase of every mapped table (what reads come from)",
            "responses": {
                "200": {
                    "description": "phases by table name",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Phases"}}
                    },
                },
                "503": error("the phase store does not answer"),
            },
        }
    }
    phase_names = ["postgres-only", "dual-write", "hybrid-read", "dynamodb-only"]
    read = [m for m in settings.tables if m.reads.patterns]
    tables = [m.name for m in read]
    rows = {row_schema_name(m): _row_schema(m, f"One {m.name} row.") for m in read}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "replicator read API",
            "version": "1",
            "description": f"Read-only access to {', '.join(tables)}, served from "
            "PostgreSQL or DynamoDB by each table's migration phase, with identical results. "
            "Lists are newest first, ordered by the item's sort key; the X-Read-Source header "
            "names the store that answered.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                **rows,
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["error", "message"],
                },
                "Phases": {
                    "type": "object",
                    "properties": {
                        "tables": {
                            "type": "object",
                            "additionalProperties": {"enum": phase_names},
                        }
                    },
                    "required": ["tables"],
                },
            }
        },
    }


# --- the server -----------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def match(table: Iterable[Route], path: str) -> tuple[Route, str] | None:
    """The route of a request path and its (decoded) placeholder value."""
    segments = path.split("/")
    for route in table:
        template = route.path.split("/")
        if len(template) != len(segments):
            continue
        value = None
        for want, got in zip(template, segments, strict=True):
            if want.startswith("{"):
                value = unquote(got)
            elif want != got:
                break
        else:
            if value:
                return route, value
    return None


def call_arguments(
    route: Route, value: str, query: dict[str, list[str]], default_limit: int
) -> tuple[list[Any], dict[str, Any]]:
    """The ReadPath call for a request: positional arguments in the method's order, then
    ``limit`` and ``after``. Raises ApiError(400) for unknown, repeated or missing parameters."""
    allowed = {p.name for p in route.params if p.where == "query"}
    if not route.single:
        allowed |= {"limit", "cursor"}
    for name, values in query.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, "bad_request", f"unknown parameter {name!r} (takes: {known})")
        if len(values) > 1:
            raise ApiError(400, "bad_request", f"parameter {name!r} is given more than once")
    args: list[Any] = []
    for param in route.params:
        if param.where == "path":
            args.append(value)
        elif param.name in query:
            args.append(query[param.name][0])
        elif param.required:
            raise ApiError(400, "bad_request", f"parameter {param.name!r} is required")
        else:
            args.append(None)
    kwargs: dict[str, Any] = {}
    if not route.single:
        kwargs["limit"] = query["limit"][0] if "limit" in query else default_limit
        kwargs["after"] = query["cursor"][0] if "cursor" in query else None
    return args, kwargs


class ReadApi:
    """The API on ``host:port`` (``reads.host``/``reads.port`` by default; port 0 = any free
    one), served by a ThreadingHTTPServer in a daemon thread."""

    def __init__(self, path: ReadPath, host: str | None = None, port: int | None = None) -> None:
        reads = path.settings.reads
        host = reads.host if host is None else host
        port = reads.port if port is None else port
        spec = to_json(openapi(path.settings))
        table = routes(path.settings)
        handler = type("Handler", (_Handler,), {"path_": path, "spec": spec, "routes": table})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ReplicatorError(
                f"cannot serve the read API on {host}:{port}: {exc.strerror or exc} "
                "(set reads.host / reads.port)"
            ) from exc
        self.httpd.daemon_threads = True
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="read-api", daemon=True
        )

    def start(self) -> ReadApi:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    path_: ReadPath
    spec: bytes
    routes: tuple[Route, ...]
    server_version = "replicator-read-api"
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections (every answer is sized)
    timeout = 60  # an idle kept-alive connection gives its thread back after a minute

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        try:
            status, body, source = self._answer(parts.path, parts.query)
        except ApiError as exc:
            status, body, source = exc.status, _error(exc.code, exc.message), None
        except QueryError as exc:
            status, body, source = 400, _error("bad_request", str(exc)), None
        except StoreError as exc:
            status, body, source = 503, _error("unavailable", str(exc)), None
        except ReplicatorError as exc:  # configuration (a missing index, say)
            status, body, source = 500, _error("misconfigured", str(exc)), None
        except Exception:
            log.exception("read API request failed", path=parts.path)
            status, body, source = 500, _error("internal", "unexpected error; see the log"), None
        self._send(status, body, source)

    def _answer(self, path: str, query_text: str) -> tuple[int, bytes, str | None]:
        if path == "/openapi.json":
            return 200, self.spec, None
        if path == "/phases":
            return 200, to_json({"tables": self.path_.current_phases()}), None
        if path == "/healthz":
            return 200, to_json({"ok": True}), None
        if path == "/metrics":
            return 200, self.path_.metrics.exposition(), "metrics"
        found = match(self.routes, path)
        if found is None:
            raise ApiError(404, "not_found", f"no such path {path!r}; see /openapi.json")
        route, value = found
        try:
            query = parse_qs(query_text, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"query string: {exc}") from exc
        args, kwargs = call_arguments(route, value, query, self.path_.config.default_page_size)
        served = self.path_.read(route.pattern, *args, **kwargs)
        if route.single:
            if served.value is None:
                raise _not_found(route, value)
            return 200, to_json(served.value), served.source
        assert isinstance(served.value, Page)
        return 200, to_json({"items": served.value.rows, "next": served.value.next}), served.source

    def _refuse(self) -> None:
        body = _error("method_not_allowed", "this API is read-only: GET only")
        # The request's body is not read: close rather than parse it as the next request.
        self.close_connection = True
        self._send(405, body, None, extra={"Allow": "GET", "Connection": "close"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def _send(
        self, status: int, body: bytes, source: str | None, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if source == "metrics":
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        else:
            self.send_header("Content-Type", "application/json; charset=utf-8")
            if source:
                self.send_header("X-Read-Source", source)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are counted in /metrics; a line per read would drown the log


def _error(code: str, message: str) -> bytes:
    return to_json({"error": code, "message": message})


def _not_found(route: Route, value: str) -> ApiError:
    return ApiError(404, "not_found", f"no {route.noun} with id {value}")


def serve(path: ReadPath, host: str | None = None, port: int | None = None) -> ReadApi:
    """Start the API; the caller keeps it running and closes it."""
    return ReadApi(path, host, port).start()
