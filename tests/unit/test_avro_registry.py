"""SchemaRegistryClient against a local stub HTTP server: caching, auth, retries and fault translation."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from worker.avro.registry import RegistryConfig, SchemaNotFound, SchemaRefused, SchemaRegistryClient
from worker.avro.schema import AvroSchema, SchemaParseError
from worker.errors import ConfigError, RegistryUnavailable

SCHEMA = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})


class Stub:
    """Answers with queued (status, body) pairs, then 200 with the schema; records requests."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, dict[str, Any] | list[Any] | bytes]] = []
        self.seen: list[tuple[str, str, str | None]] = []


@pytest.fixture
def stub() -> Iterator[tuple[Stub, str]]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            state.seen.append((self.command, self.path, self.headers.get("Authorization")))
            status, body = state.queue.pop(0) if state.queue else (200, {"schema": SCHEMA, "id": 7})
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()
    thread.join()


def client(url: str, **kw: Any) -> tuple[SchemaRegistryClient, list[float]]:
    sleeps: list[float] = []
    return SchemaRegistryClient(RegistryConfig(url=url, **kw), sleep=sleeps.append), sleeps


def test_schema_by_id_is_fetched_once_then_cached(stub: tuple[Stub, str]) -> None:
    state, url = stub
    c, _ = client(url, basic_auth_user_info="user:secret")

    first, second = c.schema_by_id(7), c.schema_by_id(7)

    assert first is second
    assert state.seen == [("GET", "/api/schemas/ids/7", "Basic dXNlcjpzZWNyZXQ=")]


def test_bearer_token_is_sent(stub: tuple[Stub, str]) -> None:
    state, url = stub
    client(url, bearer_token="tok")[0].schema_by_id(1)
    assert state.seen[0][2] == "Bearer tok"


def test_5xx_is_retried_with_backoff_then_succeeds(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(503, {}), (500, {})]
    c, sleeps = client(url, backoff_initial_s=0.5, backoff_max_s=0.8)

    assert c.schema_by_id(3).parsed["name"] == "R"
    assert sleeps == [0.5, 0.8]


def test_persistent_5xx_is_registry_unavailable_after_bounded_retries(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(503, {})] * 10
    c, sleeps = client(url, max_retries=2)

    with pytest.raises(RegistryUnavailable, match="3 attempts"):
        c.schema_by_id(3)
    assert len(state.seen) == 3 and len(sleeps) == 2


def test_unknown_id_is_schema_not_found_without_retry(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(404, {"error_code": 40403, "message": "Schema not found"})]

    with pytest.raises(SchemaNotFound):
        client(url)[0].schema_by_id(99)
    assert len(state.seen) == 1


def test_an_unknown_id_is_remembered_for_the_ttl_then_asked_again(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(404, {"error_code": 40403, "message": "Schema not found"})] * 2
    now = [100.0]
    registry = SchemaRegistryClient(RegistryConfig(url=url, not_found_ttl_s=30), clock=lambda: now[0])
    for _ in range(3):  # a run of poison records naming the id: one lookup
        with pytest.raises(SchemaNotFound, match="not found"):
            registry.schema_by_id(99)
    assert len(state.seen) == 1
    now[0] += 30  # the ttl ran out: asked again (still missing), then once more after it appears
    with pytest.raises(SchemaNotFound):
        registry.schema_by_id(99)
    now[0] += 30
    assert registry.schema_by_id(99).parsed["name"] == "R"
    assert len(state.seen) == 3


def test_the_unknown_ids_remembered_are_bounded_oldest_first(
    stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = stub
    monkeypatch.setattr("worker.avro.registry.MAX_MISSING", 2)
    state.queue = [(404, {"error_code": 40403, "message": "Schema not found"})] * 4
    registry = client(url)[0]
    for schema_id in (1, 2, 3, 1):  # 3 pushes 1 out: 1 is asked again
        with pytest.raises(SchemaNotFound):
            registry.schema_by_id(schema_id)
    assert [path for _, path, _ in state.seen] == [f"/api/schemas/ids/{i}" for i in (1, 2, 3, 1)]


def test_refused_registration_is_a_config_error(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(409, {"error_code": 409, "message": "incompatible"})]

    with pytest.raises(ConfigError, match="incompatible"):
        client(url)[0].register("t-value", AvroSchema.parse(SCHEMA))


def nested_too_deep(depth: int = 100_000) -> str:
    """An array of arrays ``depth`` deep: valid Avro in form, beyond any parser's recursion."""
    return '{"type":"array","items":' * depth + '"int"' + "}" * depth


def test_a_schema_nested_too_deep_is_a_parse_error_not_a_recursion_error() -> None:
    with pytest.raises(SchemaParseError, match="nested too deeply"):
        AvroSchema.parse(nested_too_deep())
    loaded: Any = "int"
    for _ in range(5_000):  # already loaded: fastavro copes, writing it back as text does not
        loaded = {"type": "array", "items": loaded}
    with pytest.raises(SchemaParseError, match="nested too deeply"):
        AvroSchema.parse(loaded)


def test_a_registered_schema_nested_too_deep_is_the_records_fault(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(200, {"schema": nested_too_deep()})]

    with pytest.raises(SchemaNotFound, match=r"schema 5 is not valid Avro: .*nested too deeply"):
        client(url)[0].schema_by_id(5)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"schema": 5}', "not valid Avro"),
        (b"[1, 2]", "not a JSON object"),
    ],
    ids=["nested-too-deeply", "schema-not-a-string", "not-an-object"],
)
def test_an_answer_that_cannot_be_a_schema_is_the_records_fault(
    stub: tuple[Stub, str], answer: bytes, reason: str
) -> None:
    state, url = stub
    state.queue = [(200, answer)]

    with pytest.raises(SchemaNotFound, match=reason):
        client(url)[0].schema_by_id(5)
    assert len(state.seen) == 1  # the same answer again would not help: no retry


def test_an_answer_larger_than_the_bound_is_not_read_whole(
    stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = stub
    monkeypatch.setattr("worker.avro.registry.MAX_ANSWER_BYTES", 1000)
    state.queue = [(200, {"schema": SCHEMA, "doc": "x" * 2000})]

    with pytest.raises(SchemaNotFound, match="larger than 1000 bytes"):
        client(url)[0].schema_by_id(5)


def test_an_error_answer_nested_too_deeply_still_gives_its_status(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(409, b"[" * 100_000 + b"]" * 100_000)]

    with pytest.raises(SchemaRefused, match="POST /subjects/t-value/versions: Conflict"):
        client(url)[0].register("t-value", AvroSchema.parse(SCHEMA))


def test_compatible_asks_the_compatibility_endpoint_and_registers_nothing(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(200, {"is_compatible": True})]

    assert client(url)[0].compatible("t-value", AvroSchema.parse(SCHEMA))
    assert state.seen == [("POST", "/api/compatibility/subjects/t-value/versions/latest", None)]


def test_a_subject_that_does_not_exist_yet_is_compatible(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.queue = [(404, {"error_code": 40401, "message": "Subject 't-value' not found."})]

    assert client(url)[0].compatible("t-value", AvroSchema.parse(SCHEMA))


def test_an_incompatible_schema_is_not_compatible_unless_the_subject_checks_nothing(
    stub: tuple[Stub, str],
) -> None:
    state, url = stub
    # Apicurio answers false even where its compatibility is NONE and registering would succeed.
    state.queue = [(200, {"is_compatible": False}), (200, {"compatibilityLevel": "BACKWARD"}),
                   (200, {"is_compatible": False}), (200, {"compatibilityLevel": "NONE"})]  # fmt: skip
    registry = client(url)[0]

    assert not registry.compatible("t-value", AvroSchema.parse(SCHEMA))
    assert registry.compatible("t-value", AvroSchema.parse(SCHEMA))
    assert state.seen[1][:2] == ("GET", "/api/config/t-value?defaultToGlobal=true")


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A registry that accepts connections and never answers (a dead proxy, a half-open network)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/api"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_call_to_a_registry_that_never_answers_ends_within_its_budget(blackhole: str) -> None:
    # The loop calls the registry on its own thread: five timeouts in a row would stall it for their sum.
    c = SchemaRegistryClient(RegistryConfig(url=blackhole, timeout_s=0.4, max_retries=4, call_budget_s=0.6))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="no answer"):
        c.schema_by_id(3)
    assert time.monotonic() - started < 1.0
