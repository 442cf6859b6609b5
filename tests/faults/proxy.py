"""A fault-injecting HTTP proxy between the consumer and the DynamoDB endpoint.

Every request is forwarded to the endpoint unless a fault says otherwise. Faults are drawn per
request at the rates in ``Faults``:

- throttle: answered 400 ``ThrottlingException`` without forwarding (DynamoDB's own answer when
  a table's or account's throughput is exceeded);
- error: answered 500 ``InternalServerError`` without forwarding;
- reset: the connection is closed without an answer, nothing forwarded;
- timeout: nothing forwarded, no answer for ``timeout_s`` (longer than the client's read
  timeout), then the connection is closed;
- ambiguous: forwarded and applied, then the answer is replaced by a 500 (half of them) or the
  connection is dropped (the other half): the client cannot tell it succeeded.

``down()`` makes the endpoint unreachable (the listener is closed: connections are refused,
open keep-alive connections are reset) until ``up()``. The proxy also sums the write units the
endpoint reports in the answers it forwards (``ReturnConsumedCapacity``), so a scenario can
measure write units per applied change whatever the consumer's restarts.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PREFIX = "com.amazonaws.dynamodb.v20120810#"
WRITE_TARGETS = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")


@dataclass
class Faults:
    throttle: float = 0.0
    error: float = 0.0
    reset: float = 0.0
    timeout: float = 0.0
    ambiguous: float = 0.0
    timeout_s: float = 4.0
    only_writes: bool = True  # DescribeTable and the like pass: the faults are the writes'

    def describe(self) -> str:
        rates = {
            "throttle": self.throttle,
            "500": self.error,
            "reset": self.reset,
            "timeout": self.timeout,
            "ambiguous": self.ambiguous,
        }
        return ", ".join(f"{k} {v:.0%}" for k, v in rates.items() if v)


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 1) -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port or 80))
        self.faults = Faults()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.write_units = 0.0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: set[socket.socket] = set()
        self.port = _free_port()
        self.is_down = False
        # Requests let through to the endpoint, and how many had been when down() cut it:
        # one in flight at the cut was let through before it (a request already on the wire).
        self.admitted = 0
        self.admitted_at_down = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self.up()
        return self

    def up(self) -> None:
        """Listen (again) on the same port."""
        proxy = self

        class Handler(_Handler):
            owner = proxy

        deadline = time.monotonic() + 30
        while True:
            try:
                server = _Server(("127.0.0.1", self.port), Handler)
                break
            except OSError:  # the port's last connections are still closing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self._server = server
        self.is_down = False
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Unreachable: stop listening and reset every open connection."""
        if self._server is None:
            return
        with self.lock:
            self.is_down = True
            self.admitted_at_down = self.admitted
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self.lock:
            open_sockets = list(self._handlers)
        for sock in open_sockets:
            _reset(sock)
            # close() waits for the handler's file objects; shutdown ends the connection now.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.down()

    def set(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults

    # --- per request --------------------------------------------------------------------

    def draw(self, target: str) -> str:
        with self.lock:
            f = self.faults
            if f.only_writes and target not in WRITE_TARGETS:
                return "pass"
            roll = self.rng.random()
            for name, rate in (
                ("throttle", f.throttle),
                ("error", f.error),
                ("reset", f.reset),
                ("timeout", f.timeout),
                ("ambiguous", f.ambiguous),
            ):
                if roll < rate:
                    return name
                roll -= rate
            return "pass"

    def count(self, what: str, units: float = 0.0) -> None:
        with self.lock:
            self.counts[what] += 1
            self.write_units += units


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that died or gave up mid-request (the faults' very point): no traceback."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients use it
    owner: FaultProxy

    def setup(self) -> None:
        super().setup()
        with self.owner.lock:
            self.owner._handlers.add(self.connection)

    def finish(self) -> None:
        with self.owner.lock:
            self.owner._handlers.discard(self.connection)
        with contextlib.suppress(OSError):  # the peer may have reset it
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        target = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2]
        with self.owner.lock:
            down = self.owner.is_down
            if not down:
                self.owner.admitted += 1
        if down:  # a connection opened before down(): nothing gets through
            self.owner.count("while-down")
            self._drop()
            return
        fault = self.owner.draw(target)
        self.owner.count(f"{target}:{fault}")
        if fault == "throttle":
            self._answer(400, f"{_PREFIX}ThrottlingException", "Rate exceeded")
            return
        if fault == "error":
            self._answer(500, f"{_PREFIX}InternalServerError", "injected")
            return
        if fault == "reset":
            self._drop()
            return
        if fault == "timeout":
            time.sleep(self.owner.faults.timeout_s)
            self._drop()
            return
        status, headers, answer = self._forward(body)
        if target in WRITE_TARGETS:
            self.owner.count("units", _write_units(answer))
        if fault == "ambiguous":
            if self.owner.rng.random() < 0.5:
                self._answer(500, f"{_PREFIX}InternalServerError", "lost")
            else:
                self._drop()
            return
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request("POST", self.path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _answer(self, status: int, code: str, message: str) -> None:
        payload = json.dumps({"__type": code, "message": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self) -> None:
        _reset(self.connection)
        self.close_connection = True


def _write_units(answer: bytes) -> float:
    try:
        data = json.loads(answer)
    except ValueError:
        return 0.0
    consumed = data.get("ConsumedCapacity") if isinstance(data, dict) else None
    if isinstance(consumed, dict):
        consumed = [consumed]
    if not isinstance(consumed, list):
        return 0.0
    return float(sum(c.get("CapacityUnits", 0) for c in consumed if isinstance(c, dict)))


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
