"""A registry outage is an infrastructure fault: the batch waits and nothing is dead-lettered.

The worker reaches the real registry through a small switchable proxy. With the proxy answering 503, events
whose writer schema the worker has not seen yet cannot be decoded: the worker keeps the batch, pauses its
partitions, reports not ready, and produces nothing; once the registry is back, every event is scored.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import plan_events, produce
from scenario import Scenario
from verifier import read_outputs

from worker.runtime.build import build_pipeline, registry_client
from worker.runtime.config import load_settings
from worker.runtime.health import Health
from worker.runtime.loop import Worker
from worker.runtime.metrics import Metrics

EVENTS = 200
CCOMPAT = "/apis/ccompat/v7"


class SwitchableProxy(ThreadingHTTPServer):
    """Forwards requests to the registry at ``target`` while ``up``; answers 503 otherwise."""

    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.target = target.removesuffix(CCOMPAT)
        self.up = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{CCOMPAT}"


class _Forward(BaseHTTPRequestHandler):
    server: SwitchableProxy

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        self._forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _forward(self, body: bytes | None) -> None:
        if not self.server.up:
            self._answer(503, b'{"error_code": 50301, "message": "down for the test"}')
            return
        request = urllib.request.Request(self.server.target + self.path, data=body, method=self.command)
        request.add_header("Content-Type", self.headers.get("Content-Type", "application/json"))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                self._answer(response.status, response.read())
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def proxy_to(target: str) -> Iterator[SwitchableProxy]:
    proxy = SwitchableProxy(target)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_registry_outage_holds_the_batch_and_dead_letters_nothing(
    scenario: Callable[..., Scenario],
) -> None:
    s = scenario(partitions=2, replicas=1)
    with proxy_to(s.registry_url) as proxy:
        base = load_settings(s.config)
        registry = base.schema_registry.model_copy(update={"url": proxy.url})
        settings = base.model_copy(update={"schema_registry": registry})
        pipeline = build_pipeline(settings, registry_client(settings))  # registers the score schema
        health = Health(settings.stall_after_s)
        worker = Worker(settings, pipeline, Metrics(), health)
        thread = threading.Thread(target=worker.run, name="worker")
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while not health.readiness()[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            assert health.readiness()[0], health.readiness()
            proxy.up = False
            produce(
                s.bootstrap_servers,
                s.input_topic,
                plan_events(s.graph, EVENTS, seed=3, schema_id=s.schema_id),
            )
            deadline = time.monotonic() + 30
            while health.readiness()[0] and time.monotonic() < deadline:
                time.sleep(0.1)
            ready, reason = health.readiness()
            assert not ready and "schema registry" in reason
            time.sleep(2)  # the batch keeps waiting: nothing scored, nothing dead-lettered
            assert read_outputs(s.bootstrap_servers, s.score_topic, "score") == []
            assert read_outputs(s.bootstrap_servers, s.dead_letter_topic, "dead_letter") == []
            proxy.up = True
            deadline = time.monotonic() + 90
            scores: list[Any] = []
            while len(scores) < EVENTS and time.monotonic() < deadline:
                time.sleep(0.5)
                scores = read_outputs(s.bootstrap_servers, s.score_topic, "score")
            assert health.readiness() == (True, "ok")  # back to ready once the batch went through
        finally:
            worker.stop()
            thread.join(60)
    assert len(scores) == EVENTS
    assert read_outputs(s.bootstrap_servers, s.dead_letter_topic, "dead_letter") == []
