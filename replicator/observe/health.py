"""The consumer's HTTP endpoint (standard library, one daemon thread): /metrics, /healthz,
/readyz, and the HTML status page at / (replicator.observe.status: lag and throughput charts).

- ``/healthz`` (liveness): 200 while the loop is running and has turned (polled Kafka, or
  waited between two attempts of a write, a lookup or a batch: replicator.stream.retry) within
  ``metrics.live_within_s``; 503 otherwise. A DynamoDB outage does not fail it: the loop is
  alive, retrying, and a restart would not help.
- ``/readyz`` (readiness): 200 when the consumer group has given this consumer its assignment
  and the last DynamoDB write attempt did not fail; 503 with a short JSON reason otherwise.
  An empty assignment (more consumers than partitions) counts as ready: the standby is healthy
  and takes partitions over when another member leaves, and an unready standby would block a
  rolling update and the disruption budget.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from replicator.errors import ReplicatorError
from replicator.observe.metrics import Metrics
from replicator.observe.probes import Health
from replicator.observe.status_page import History, from_registry, page_html


class Server:
    """ThreadingHTTPServer in a daemon thread; ``port`` 0 binds any free port."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        health: Health,
        history: History | None = None,
    ) -> None:
        handler = type(
            "Handler", (_Handler,), {"metrics": metrics, "health": health, "history": history}
        )
        self.history = history
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ReplicatorError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
                "(set metrics.port, or metrics.enabled: false)"
            ) from exc
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )

    def start(self) -> Server:
        self.thread.start()
        if self.history is not None:
            self.history.start()
        return self

    def close(self) -> None:
        if self.history is not None:
            self.history.stop()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    health: Health
    history: History | None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.metrics.exposition())
        elif path == "/healthz":
            self._json(*self.health.live())
        elif path == "/readyz":
            self._json(*self.health.ready())
        elif path in ("/", "/status"):
            self._send(200, "text/html; charset=utf-8", self._page().encode())
        else:
            self._json(
                False,
                {"error": "not found", "paths": ["/", "/metrics", "/healthz", "/readyz"]},
            )

    def _page(self) -> str:
        history = self.history
        points = history.snapshot() if history is not None else []
        tables = list(history.topic_tables.values()) if history is not None else []
        span = history.keep_s if history is not None else 600.0
        return page_html(
            points, tables, self.health, time.time(), span, from_registry(self.metrics)
        )

    def _json(self, ok: bool, body: dict[str, Any]) -> None:
        status = 200 if ok else (404 if "error" in body else 503)
        self._send(status, "application/json", json.dumps(body).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # probes every few seconds: not worth a log line each
