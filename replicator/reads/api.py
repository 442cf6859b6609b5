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
from replicator.reads.path import (
    PAYMENT_METHODS,
    PAYMENT_STATUSES,
    Page,
    QueryError,
    ReadPath,
    RowShape,
    StoreError,
    logs_mapping,
    payments_mapping,
)

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
    pattern: str  # the ReadPath method
    summary: str
    row: Literal["LogRow", "PaymentRow"]
    params: tuple[Param, ...]  # positional arguments of the method, in order
    single: bool = False


def _id(name: str, what: str, bits: int = 32) -> Param:
    return Param(name, "path", "integer", f"{what} ({bits}-bit integer)")


_START_TS = Param("start", "query", "timestamp", "from this time on (included); a date = midnight")
_END_TS = Param("end", "query", "timestamp", "up to this time (excluded); a date = midnight")
_START_DAY = Param("start", "query", "date", "from this date on (included)")
_END_DAY = Param("end", "query", "date", "up to this date (included)")

ROUTES: tuple[Route, ...] = (
    Route(
        "/logs/by-application/{application_id}",
        "logs_by_application",
        "Logs of an application, newest first",
        "LogRow",
        (_id("application_id", "ApplicationId"),),
    ),
    Route(
        "/logs/by-service/{service}",
        "logs_by_service",
        "Logs of a service in a time range [start, end), newest first",
        "LogRow",
        (Param("service", "path", "string", "ServiceName"), _START_TS, _END_TS),
    ),
    Route(
        "/logs/by-correlation/{correlation_id}",
        "logs_by_correlation",
        "Logs sharing a CorrelationId, newest first",
        "LogRow",
        (Param("correlation_id", "path", "string", "CorrelationId"),),
    ),
    Route(
        "/logs/failures/{day}",
        "failures_of_day",
        "Failed calls (IsSuccess false) of a day (UTC), newest first",
        "LogRow",
        (Param("day", "path", "date", "the day, YYYY-MM-DD"),),
    ),
    Route(
        "/logs/{log_id}",
        "log_by_id",
        "One log by LogId",
        "LogRow",
        (_id("log_id", "LogId", 64),),
        single=True,
    ),
    Route(
        "/payments/by-customer/{customer_id}",
        "payments_by_customer",
        "Payments of a customer, newest first, optionally in a date range [start, end]",
        "PaymentRow",
        (
            _id("customer_id", "CustomerId"),
            Param("start", "query", "date", "from this date on (included)", required=False),
            Param("end", "query", "date", "up to this date (included)", required=False),
        ),
    ),
    Route(
        "/payments/by-loan/{loan_id}",
        "payments_by_loan",
        "Payments of a loan, newest first",
        "PaymentRow",
        (_id("loan_id", "LoanId"),),
    ),
    Route(
        "/payments/by-status/{status}",
        "payments_by_status",
        "Payments in a status, in a date range [start, end], newest first",
        "PaymentRow",
        (
            Param("status", "path", "string", "PaymentStatus", choices=PAYMENT_STATUSES),
            _START_DAY,
            _END_DAY,
        ),
    ),
    Route(
        "/payments/by-method/{method}",
        "payments_by_method",
        "Payments made by a method, in a date range [start, end], newest first",
        "PaymentRow",
        (
            Param("method", "path", "string", "PaymentMethod", choices=PAYMENT_METHODS),
            _START_DAY,
            _END_DAY,
        ),
    ),
    Route(
        "/payments/{payment_id}",
        "payment_by_id",
        "One payment by PaymentId",
        "PaymentRow",
        (_id("payment_id", "PaymentId"),),
        single=True,
    ),
)


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
    for route in ROUTES:
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "replicator read API",
            "version": "1",
            "description": "Read-only access to IntegrationLogs and Payments, served from "
            "PostgreSQL or DynamoDB by each table's migration phase, with identical results. "
            "Lists are newest first, ordered by the item's sort key; the X-Read-Source header "
            "names the store that answered.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "LogRow": _row_schema(logs_mapping(settings), "One IntegrationLogs row."),
                "PaymentRow": _row_schema(payments_mapping(settings), "One Payments row."),
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


def match(path: str) -> tuple[Route, str] | None:
    """The route of a request path and its (decoded) placeholder value."""
    segments = path.split("/")
    for route in ROUTES:
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
        handler = type("Handler", (_Handler,), {"path_": path, "spec": spec})
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
        found = match(path)
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
    what = "log" if route.row == "LogRow" else "payment"
    return ApiError(404, "not_found", f"no {what} with id {value}")


def serve(path: ReadPath, host: str | None = None, port: int | None = None) -> ReadApi:
    """Start the API; the caller keeps it running and closes it."""
    return ReadApi(path, host, port).start()
