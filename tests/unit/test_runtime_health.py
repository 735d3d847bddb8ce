"""Health: liveness and readiness on an injected clock; the HTTP endpoints over a real socket."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from worker.errors import ConfigError
from worker.runtime.health import Health, HealthServer
from worker.runtime.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_alive_until_the_loop_stalls(clock: FakeClock) -> None:
    health = Health(stall_after_s=30, clock=clock)
    assert health.liveness() == (True, "ok")  # starting up: the grace period runs from construction
    clock.now += 29.9
    assert health.liveness()[0]
    clock.now += 0.2
    alive, reason = health.liveness()
    assert not alive
    assert reason.startswith("stalled") and "30.1 s" in reason
    health.beat()
    assert health.liveness() == (True, "ok")
    clock.now += 30.0
    assert health.liveness()[0]  # exactly at the limit still counts as alive


def test_fatal_is_final_and_keeps_the_first_reason(clock: FakeClock) -> None:
    health = Health(stall_after_s=30, clock=clock)
    health.set_fatal("producer fenced")
    health.set_fatal("something later")
    health.beat()
    assert health.liveness() == (False, "fatal: producer fenced")
    assert health.readiness() == (False, "fatal: producer fenced")


def test_readiness_transitions(clock: FakeClock) -> None:
    health = Health(stall_after_s=10, clock=clock)
    assert health.readiness() == (False, "no partitions assigned")
    health.set_assigned(3)
    assert health.readiness() == (True, "ok")
    health.set_breaker_open("invalid ratio 0.8 over 1000 records")
    assert health.readiness() == (False, "breaker open: invalid ratio 0.8 over 1000 records")
    assert health.liveness() == (True, "ok")  # an open breaker takes the worker out of service, not kills it
    health.set_breaker_open(None)
    assert health.readiness() == (True, "ok")
    health.set_assigned(0)  # everything revoked
    assert health.readiness() == (False, "no partitions assigned")
    health.set_assigned(1)
    clock.now += 11
    ready, reason = health.readiness()
    assert not ready and reason.startswith("stalled")


def test_concurrent_writers_and_readers(clock: FakeClock) -> None:
    health = Health(stall_after_s=10, clock=clock)
    health.set_assigned(1)
    answers: list[bool] = []

    def read() -> None:
        for _ in range(2000):
            answers.append(health.readiness()[0])

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(2000):
        health.beat()
        health.set_breaker_open("x" if i % 2 else None)
    health.set_breaker_open(None)
    reader.join()
    assert len(answers) == 2000
    assert health.readiness() == (True, "ok")


def get(port: int, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[Health, Metrics, HealthServer]]:
    health, metrics = Health(stall_after_s=5, clock=clock), Metrics()
    with HealthServer(health, metrics, host="127.0.0.1", port=0) as server:
        yield health, metrics, server


def test_metrics_endpoint(served: tuple[Health, Metrics, HealthServer]) -> None:
    _, metrics, server = served
    metrics.events_in("events", 42)
    status, content_type, body = get(server.port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'rtml_events_in_total{topic="events"} 42.0' in body.decode().splitlines()


def test_health_endpoints_follow_the_state(
    served: tuple[Health, Metrics, HealthServer], clock: FakeClock
) -> None:
    health, _, server = served
    assert get(server.port, "/healthz")[0] == 200
    status, content_type, body = get(server.port, "/readyz")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body) == {"ok": False, "reason": "no partitions assigned"}
    health.set_assigned(2)
    status, _, body = get(server.port, "/readyz?verbose=1")
    assert (status, json.loads(body)) == (200, {"ok": True, "reason": "ok"})
    clock.now += 6
    status, _, body = get(server.port, "/healthz")
    assert status == 503
    assert json.loads(body)["reason"].startswith("stalled")
    assert get(server.port, "/readyz")[0] == 503


def test_unknown_paths_and_methods(served: tuple[Health, Metrics, HealthServer]) -> None:
    _, _, server = served
    assert get(server.port, "/")[0] == 404
    assert get(server.port, "/healthz/extra")[0] == 404
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("POST", "/healthz", body=b"{}")
        assert conn.getresponse().status == 501
    finally:
        conn.close()


def test_no_request_log_on_stderr(
    served: tuple[Health, Metrics, HealthServer], capfd: pytest.CaptureFixture[str]
) -> None:
    _, _, server = served
    get(server.port, "/healthz")
    get(server.port, "/nowhere")
    assert capfd.readouterr().err == ""


def test_close_is_idempotent_and_frees_the_port() -> None:
    server = HealthServer(Health(stall_after_s=5), Metrics(), port=0)
    port = server.port
    assert port > 0
    server.close()
    server.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    # The port can be bound again at once.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_a_taken_port_is_a_config_error() -> None:
    with (
        HealthServer(Health(stall_after_s=5), Metrics(), port=0) as first,
        pytest.raises(ConfigError, match="metrics_port"),
    ):
        HealthServer(Health(stall_after_s=5), Metrics(), port=first.port)
