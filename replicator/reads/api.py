"""The HTTP read API (read-only, Starlette on uvicorn): the declared access patterns and the
current phases as JSON, for applications in any language, with an OpenAPI 3.1 description at
``/openapi.json`` generated from the same route definitions as the routes (which come from the
mappings' declared patterns).

- Lists answer ``{"items": [...], "next": cursor | null}``; pass ``next`` back as ``cursor`` for
  the following page. A single item answers the row itself, or 404.
- Numbers are JSON numbers with their exact decimal text (amounts are never floats on our
  side; read them as decimals); a decimal column with a declared ``scale`` keeps it on both
  stores (numeric(10,2): ``2500.00``, never ``2500`` or ``2.5E+3``). Timestamps are
  fixed-width UTC text, dates ``YYYY-MM-DD``; a NULL column is an absent key.
- Bad parameters answer 400, an unknown path or item 404, any method but GET 405, a store that
  does not answer 503; every error is ``{"error": code, "message": text}``.
- The ``X-Read-Source`` header names the store that served the answer (postgres or dynamodb).

It binds ``reads.host`` (127.0.0.1 unless configured). Reads block, so each runs in a worker
thread; an answer not ready within ``reads.request_timeout_s`` is a 503. Idle keep-alive
connections close after ``reads.keep_alive_s``; ``close()`` drains the requests in flight for up
to ``reads.shutdown_timeout_s``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

import anyio
import anyio.to_thread
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from replicator.config import Settings
from replicator.core.mapping import TableMapping
from replicator.errors import ReplicatorError
from replicator.reads.patterns import Pattern, QueryError, StoreError, catalog
from replicator.reads.router import ReadPath
from replicator.reads.rows import Page, RowShape, to_json

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


# --- OpenAPI --------------------------------------------------------------------------------

_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"


def _row_schema(mapping: TableMapping, description: str) -> dict[str, Any]:
    shape = RowShape.of(mapping)
    props: dict[str, Any] = {}
    for attribute, kind in shape.kinds.items():
        if kind in ("int", "bigint"):
            props[attribute] = {"type": "integer"}
        elif kind == "decimal" and attribute in shape.scales:
            scale = shape.scales[attribute]
            example = Decimal(2500).quantize(Decimal(1).scaleb(-scale))
            props[attribute] = {
                "type": "number",
                "description": f"exact decimal, always with {scale} decimal places (the column's "
                f"scale, from either store): {example}, never {int(example)} or an exponent; "
                "read it as a decimal, not a float",
                "examples": [example],
                "x-scale": scale,
            }
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

_JSON = "application/json; charset=utf-8"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def call_arguments(
    route: Route, value: str, query: dict[str, list[str]], default_limit: int
) -> tuple[list[Any], dict[str, Any]]:
    """The ReadPath call for a request: positional arguments in the pattern's order, then
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


def _json(status: int, body: bytes, source: str | None = None, **headers: str) -> Response:
    headers = {"Cache-Control": "no-store", **headers}
    if source:
        headers["X-Read-Source"] = source
    return Response(body, status, headers=headers, media_type=_JSON)


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    return _json(status, to_json({"error": code, "message": message}), **headers)


def _read(path: ReadPath, route: Route, value: str, query_text: str) -> Response:
    """One pattern's answer, or its error as {"error", "message"} (runs in a worker thread:
    the read path blocks)."""
    try:
        try:
            query = parse_qs(query_text, keep_blank_values=True, strict_parsing=False)
        except ValueError as exc:
            raise ApiError(400, "bad_request", f"query string: {exc}") from exc
        args, kwargs = call_arguments(route, value, query, path.config.default_page_size)
        served = path.read(route.pattern, *args, **kwargs)
        if route.single:
            if served.value is None:
                raise ApiError(404, "not_found", f"no {route.noun} with id {value}")
            return _json(200, to_json(served.value), served.source)
        assert isinstance(served.value, Page)
        page = {"items": served.value.rows, "next": served.value.next}
        return _json(200, to_json(page), served.source)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    except QueryError as exc:
        return _error(400, "bad_request", str(exc))
    except StoreError as exc:
        return _error(503, "unavailable", str(exc))
    except ReplicatorError as exc:  # configuration (a missing index, say)
        return _error(500, "misconfigured", str(exc))
    except Exception:
        log.exception("read API request failed", pattern=route.pattern)
        return _error(500, "internal", "unexpected error; see the log")


class _RawPathRoute(StarletteRoute):
    """Matches the path as sent (ASGI ``raw_path``), then decodes the placeholder: a value with
    an encoded slash (``Credit%20Check%2FEU``) stays one segment, and a real extra segment
    (``/logs/by-service/a/b``) is still no route (404)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        raw = scope.get("raw_path")
        if scope["type"] != "http" or not raw:
            return super().matches(scope)
        as_sent = {**scope, "path": raw.decode("latin-1").split("?", 1)[0], "root_path": ""}
        found, child = super().matches(as_sent)
        if found is not Match.NONE:
            child["path_params"] = {k: unquote(v) for k, v in child["path_params"].items()}
        return found, child


class _GetOnly:
    """Any method but GET is refused before routing: the API is read-only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "GET":
            refused = _error(
                405, "method_not_allowed", "this API is read-only: GET only", Allow="GET"
            )
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


def app(path: ReadPath) -> Starlette:
    """The ASGI application: one route per declared pattern (the same definitions the OpenAPI
    description is generated from), /phases, /openapi.json, /metrics, /healthz."""
    timeout_s = path.config.request_timeout_s
    spec = to_json(openapi(path.settings))

    async def in_thread(work: Callable[[], Response]) -> Response:
        # The read path blocks: a worker thread per request. One that outlives the timeout is
        # left to finish (the stores' own timeouts end it); the client gets a 503 now.
        try:
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            return _error(
                503, "timeout", f"no answer within {timeout_s:g} s (reads.request_timeout_s)"
            )

    def pattern_endpoint(route: Route) -> Callable[[Request], Awaitable[Response]]:
        name = route.params[0].name

        async def endpoint(request: Request) -> Response:
            value = request.path_params[name]
            return await in_thread(lambda: _read(path, route, value, request.url.query))

        return endpoint

    async def phases(_: Request) -> Response:
        def work() -> Response:
            try:
                return _json(200, to_json({"tables": path.current_phases()}))
            except ReplicatorError as exc:
                return _error(503, "unavailable", str(exc))

        return await in_thread(work)

    async def spec_endpoint(_: Request) -> Response:
        return _json(200, spec)

    async def healthz(_: Request) -> Response:
        return _json(200, to_json({"ok": True}))

    async def metrics(_: Request) -> Response:
        return Response(path.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, _: Exception) -> Response:
        return _error(404, "not_found", f"no such path {request.url.path!r}; see /openapi.json")

    table: list[BaseRoute] = [
        _RawPathRoute(r.path, pattern_endpoint(r), methods=["GET"], name=r.pattern)
        for r in routes(path.settings)
    ]
    table += [
        StarletteRoute("/phases", phases, methods=["GET"]),
        StarletteRoute("/openapi.json", spec_endpoint, methods=["GET"]),
        StarletteRoute("/metrics", metrics, methods=["GET"]),
        StarletteRoute("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(
        routes=table,
        middleware=[Middleware(_GetOnly)],
        exception_handlers={404: not_found},
    )


class ReadApi:
    """The API on ``host:port`` (``reads.host``/``reads.port`` by default; port 0 = any free
    one), served by uvicorn in a thread of its own: HTTP/1.1 keep-alive (idle connections
    closed after ``reads.keep_alive_s``), and on ``close()`` a graceful shutdown that lets the
    requests in flight finish, for up to ``reads.shutdown_timeout_s``."""

    def __init__(self, path: ReadPath, host: str | None = None, port: int | None = None) -> None:
        reads = path.settings.reads
        self.host = reads.host if host is None else host
        wanted = reads.port if port is None else port
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            # Bound here, not by uvicorn: a taken port is one clear error, and port 0 is known.
            self.socket = socket.create_server((self.host, wanted), family=family)
        except OSError as exc:
            raise ReplicatorError(
                f"cannot serve the read API on {self.host}:{wanted}: {exc.strerror or exc} "
                "(set reads.host / reads.port)"
            ) from exc
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app(path),
            lifespan="off",
            log_config=None,
            access_log=False,  # reads are counted in /metrics; a line per read would drown the log
            timeout_keep_alive=int(reads.keep_alive_s),
            timeout_graceful_shutdown=int(reads.shutdown_timeout_s),
            server_header=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="read-api", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()[:2]
        return host, port

    def start(self, timeout_s: float = 10.0) -> ReadApi:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise ReplicatorError("the read API did not start; see the log")
            time.sleep(0.01)
        return self

    def close(self) -> None:
        """Stop accepting, let the requests in flight finish, then stop."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join((self.server.config.timeout_graceful_shutdown or 0) + 5)
        self.socket.close()


def serve(path: ReadPath, host: str | None = None, port: int | None = None) -> ReadApi:
    """Start the API; the caller keeps it running and closes it."""
    return ReadApi(path, host, port).start()
