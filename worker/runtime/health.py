"""Liveness and readiness of the worker, and the small HTTP server that exposes them with the metrics.

`Health` is written by the consumer loop (``beat`` once per turn, the setters on rebalance, breaker changes
and fatal errors) and read by the HTTP thread; a lock makes that safe, and no method blocks beyond it.

    alive  = no fatal error  and  the loop turned within ``stall_after_s``
    ready  = alive  and  at least one partition assigned  and  the breaker closed  and  no dependency down
             and  outputs going out (none failing, none waiting on the broker for long)

`HealthServer` serves, from a daemon thread:

    GET /metrics   200, the Prometheus text exposition (``text/plain; version=0.0.4``)
    GET /healthz   200 or 503, ``{"ok": bool, "reason": str}`` from `Health.liveness`
    GET /readyz    200 or 503, the same from `Health.readiness`
    anything else  404
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from worker.errors import ConfigError
from worker.runtime.metrics import Metrics

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class Health:
    """The worker's health as the loop reports it. Thread safe; every method is quick and never raises.

    The clock starts at construction, so a worker that is still starting up counts as alive for
    ``stall_after_s`` before its first ``beat``.
    """

    def __init__(self, stall_after_s: float, *, clock: Clock = time.monotonic) -> None:
        self._stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._assigned = 0
        self._breaker: str | None = None
        self._dependency: str | None = None
        self._suspended: str | None = None
        self._outputs: str | None = None
        self._fatal: str | None = None

    def beat(self) -> None:
        """The loop turned (called once per poll, whether or not it brought events)."""
        now = self._clock()
        with self._lock:
            self._last_beat = now

    def set_assigned(self, n: int) -> None:
        """The number of partitions assigned now (after every assign, revoke or lost)."""
        with self._lock:
            self._assigned = n

    def set_breaker_open(self, reason: str | None) -> None:
        """Open the breaker with ``reason``, or close it with None."""
        with self._lock:
            self._breaker = reason

    def set_suspended(self, reason: str | None) -> None:
        """Nothing to score with (a deployment deleted), with ``reason``; or scoring again with None."""
        with self._lock:
            self._suspended = reason

    def set_dependency_down(self, reason: str | None) -> None:
        """A dependency the loop waits for (the registry) is down with ``reason``, or back with None."""
        with self._lock:
            self._dependency = reason

    def set_outputs_down(self, reason: str | None) -> None:
        """Outputs cannot be delivered (``reason``: the broker's error, or how long the oldest have waited),
        or they go out again with None. Liveness is unaffected: the loop turns and waits in order."""
        with self._lock:
            self._outputs = reason

    def set_fatal(self, reason: str) -> None:
        """The worker cannot go on (e.g. a fenced producer): liveness fails; the first reason stays."""
        with self._lock:
            if self._fatal is None:
                self._fatal = reason

    def liveness(self) -> tuple[bool, str]:
        """(alive, reason): alive when nothing fatal happened and the last beat is recent enough."""
        now = self._clock()
        with self._lock:
            fatal, last_beat = self._fatal, self._last_beat
        if fatal is not None:
            return False, f"fatal: {fatal}"
        idle = now - last_beat
        if idle > self._stall_after_s:
            return (
                False,
                f"stalled: the loop has not turned for {idle:.1f} s (limit {self._stall_after_s:g} s)",
            )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason): ready when alive, assigned at least one partition, not suspended, the breaker
        closed, no dependency down and outputs going out."""
        alive, reason = self.liveness()
        if not alive:
            return False, reason
        with self._lock:
            assigned, breaker, dependency = self._assigned, self._breaker, self._dependency
            outputs, suspended = self._outputs, self._suspended
        if suspended is not None:
            return False, f"paused: {suspended}"
        if breaker is not None:
            return False, f"breaker open: {breaker}"
        if dependency is not None:
            return False, f"waiting: {dependency}"
        if outputs is not None:
            return False, f"outputs not delivered: {outputs}"
        if assigned < 1:
            return False, "no partitions assigned"
        return True, "ok"


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, served from a daemon thread.

    Binds and starts serving in the constructor; raises `ConfigError` (field ``metrics_port``) when the
    address cannot be bound. ``port`` is the bound port (useful with port 0). `close` stops the thread and
    closes the socket; it is idempotent, and the server is a context manager that closes on exit.
    """

    def __init__(self, health: Health, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}", field="metrics_port"
            ) from exc
        self._server.health = health
        self._server.metrics = metrics
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="rtml-health", daemon=True
        )
        self._thread.start()
        log.info("health and metrics server listening", extra={"host": host, "port": self.port})

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and close the listening socket; waits for the serving thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    health: Health
    metrics: Metrics

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A broken scrape must not print a traceback to stderr in the middle of the JSON logs.
        log.exception("health server request failed", extra={"client": str(client_address)})


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds; a stuck client cannot hold a handler thread forever

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send(HTTPStatus.OK, self.server.metrics.render(), CONTENT_TYPE_PLAIN_0_0_4)
        elif path in ("/healthz", "/readyz"):
            health = self.server.health
            ok, reason = health.liveness() if path == "/healthz" else health.readiness()
            body = json.dumps({"ok": ok, "reason": reason}).encode()
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, body, "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, b'{"ok": false, "reason": "not found"}', "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus and the kubelet poll these every few seconds."""
