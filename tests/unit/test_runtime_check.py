"""``rtml-worker run --check``: what a user sees for good and bad settings, without Kafka."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from worker.cli import main
from worker.errors import ConfigError
from worker.runtime.config import Settings, load_settings
from worker.runtime.preflight import admin_config, check_online, wait_for_broker

EVENT = {"type": "record", "name": "Event", "fields": [{"name": "id", "type": "string"},
         {"name": "flag", "type": "boolean"}]}  # fmt: skip
SCORE = {"type": "record", "name": "Score", "fields": [{"name": "id", "type": "string"},
         {"name": "flag", "type": "boolean"}]}  # fmt: skip
GRAPH = {
    "name": "passthrough",
    "inputs": [{"name": "id", "dtype": "string"}, {"name": "flag", "dtype": "bool"}],
    "outputs": [{"name": "id", "dtype": "string"}, {"name": "flag", "dtype": "bool"}],
}


def write_config(tmp_path: Path, *, score: dict[str, Any] = SCORE, **settings: Any) -> Path:
    """A TOML config over ``tmp_path`` with plain framing; ``settings`` replace (dotted) keys of it."""
    (tmp_path / "event.avsc").write_text(json.dumps(EVENT))
    (tmp_path / "score.avsc").write_text(json.dumps(score))
    (tmp_path / "graph.json").write_text(json.dumps(GRAPH))
    values: dict[str, Any] = {
        "group_id": "g",
        "graph": str(tmp_path / "graph.json"),
        "model_store": str(tmp_path / "models"),
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # never contacted without --online
        "input": {"topics": ["events"], "reader_schema": str(tmp_path / "event.avsc"), "framing": "plain"},
        "output": {"topic": "scores", "schema": str(tmp_path / "score.avsc"), "framing": "plain"},
        "dead_letter": {"topic": "dlq"},
    }
    for dotted, value in settings.items():
        *tables, key = dotted.split("__")
        table = values
        for name in tables:
            table = table.setdefault(name, {})
        table[key] = value
    path = tmp_path / "worker.toml"
    path.write_text(_toml(values))
    return path


def _toml(values: dict[str, Any], prefix: str = "") -> str:
    plain = [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, dict)]
    tables = [_toml(v, f"{prefix}{k}.") for k, v in values.items() if isinstance(v, dict)]
    head = f"[{prefix.rstrip('.')}]\n" if prefix else ""  # table names here have no dots of their own
    return head + "\n".join(plain) + "\n\n" + "".join(tables)


def check(config: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(config), "--check", *extra])
    return code, out.getvalue(), err.getvalue()


def test_a_good_config_passes(tmp_path: Path) -> None:
    code, out, err = check(write_config(tmp_path))
    assert (code, err) == (0, "")
    assert out.startswith("ok: graph passthrough (")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            [{"name": "id", "type": "string"}],
            "graph output 'flag' (bool) is not a field of the output schema",
        ),
        (
            [{"name": "id", "type": "string"}, {"name": "flag", "type": "int"}],
            "field 'flag' is int in the output schema, but graph output 'flag' is bool",
        ),
        (
            [*SCORE["fields"], {"name": "region", "type": "string"}],
            "field 'region' (string) is not a graph output",
        ),
    ],
    ids=["missing-output", "bool-as-int", "extra-required-field"],
)
def test_an_output_schema_that_does_not_fit_the_graph_fails_the_check(
    tmp_path: Path, fields: list[dict[str, Any]], message: str
) -> None:
    code, out, err = check(write_config(tmp_path, score={**SCORE, "fields": fields}))
    assert (code, out) == (2, "")
    assert err.startswith(f"rtml-worker: error: output.schema: {message}")
    assert len(err.splitlines()) == 1


# --- with a registry: a local stub answering as told, recording what it was asked --------------------------

Answer = tuple[int, Any]  # status, and a JSON body (bytes are sent as they are)
PREFIX = "/apis/ccompat/v7"


class Registry:
    """A stub registry: ``answers`` maps "METHOD /path" (below the URL) to an answer; the rest is 404."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {"GET /subjects": (200, [])}
        self.seen: list[str] = []
        self.url = ""
        self.delay_s = 0.0  # before answering


class Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the timeout test) is not the stub's error


@pytest.fixture
def registry() -> Iterator[Registry]:
    state = Registry()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(state.delay_s)
            asked = f"{self.command} {self.path.removeprefix(PREFIX)}"
            state.seen.append(asked)
            status, body = state.answers.get(asked, (404, {"error_code": 40401, "message": "not found"}))
            if not self.path.startswith(PREFIX):  # Apicurio's answer outside its ccompat API
                status, body = 404, {"title": "RESTEASY003210: Could not find resource", "status": 404}
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer  # noqa: N815 (http.server's names)

        def log_message(self, *args: Any) -> None:
            pass

    server = Quiet(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def framed(tmp_path: Path, url: str, **settings: Any) -> Path:
    """Confluent framing on both sides, with the registry at ``url``."""
    return write_config(
        tmp_path,
        schema_registry__url=url,
        input__framing="confluent",
        output__framing="confluent",
        **settings,
    )


def test_check_registers_nothing_and_says_a_new_subject_would_be_accepted(
    tmp_path: Path, registry: Registry
) -> None:
    code, out, err = check(framed(tmp_path, registry.url))

    assert (code, err) == (0, "")
    assert "POST /subjects/scores-value/versions" not in registry.seen  # before: registered as a side effect
    assert "POST /compatibility/subjects/scores-value/versions/latest" in registry.seen
    assert "ok: output schema not registered under scores-value yet; the registry accepts it" in out
    assert f"ok: schema_registry.url {registry.url} answers\n" in out


def test_check_gives_the_id_of_a_schema_already_registered(tmp_path: Path, registry: Registry) -> None:
    registry.answers["POST /subjects/scores-value"] = (
        200,
        {"subject": "scores-value", "version": 3, "id": 41},
    )

    code, out, err = check(framed(tmp_path, registry.url))

    assert (code, err) == (0, "")
    assert "ok: output schema registered under scores-value as id 41" in out
    assert not [asked for asked in registry.seen if asked.endswith("/versions")]


def test_check_refuses_a_schema_the_registry_would_refuse(tmp_path: Path, registry: Registry) -> None:
    registry.answers["POST /compatibility/subjects/scores-value/versions/latest"] = (
        200,
        {"is_compatible": False},
    )
    registry.answers["GET /config/scores-value?defaultToGlobal=true"] = (200, {"compatibilityLevel": "FULL"})

    code, _, err = check(framed(tmp_path, registry.url))

    assert code == 2
    assert err == (
        "rtml-worker: error: output.schema: the registry would refuse it under scores-value: not compatible "
        "with the subject's latest version (compatibility FULL)\n"
    )


def test_check_without_auto_register_needs_the_schema_registered(tmp_path: Path, registry: Registry) -> None:
    code, _, err = check(framed(tmp_path, registry.url, schema_registry__auto_register=False))

    assert code == 2
    assert err.startswith("rtml-worker: error: output.schema: not registered under scores-value")
    assert not [asked for asked in registry.seen if asked.endswith("/versions")]


# --- a registry that is not there, or not one: one line naming the setting, exit code 2 ---------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_line(code: int, out: str, err: str) -> str:
    assert (code, out) == (2, "")
    assert err.startswith("rtml-worker: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err.removeprefix("rtml-worker: error: ").rstrip("\n")


def test_a_registry_on_a_closed_port_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    message = one_line(*check(framed(tmp_path, url)))
    reason = "GET /subjects: connection refused; 5 attempts"
    assert message == f"schema_registry.url: no registry answers at {url} ({reason})"


def test_a_registry_url_without_the_ccompat_path_is_one_line(tmp_path: Path, registry: Registry) -> None:
    url = registry.url.removesuffix(PREFIX)  # before: SchemaNotFound, with a traceback
    message = one_line(*check(framed(tmp_path, url)))
    assert message == (
        f"schema_registry.url: no Confluent-compatible registry answers at {url} (HTTP 404 on /subjects); "
        "does the URL end in /apis/ccompat/v7?"
    )


def test_https_on_a_plain_http_port_is_one_line(tmp_path: Path, registry: Registry) -> None:
    url = registry.url.replace("http://", "https://")
    message = one_line(*check(framed(tmp_path, url)))
    assert message.startswith(
        f"schema_registry.url: no registry answers at {url} (GET /subjects: TLS handshake failed"
    )
    assert "does the port speak plain http?" in message


def test_an_unresolvable_registry_host_is_one_line(tmp_path: Path) -> None:
    url = "http://registry.invalid:8081/apis/ccompat/v7"
    message = one_line(*check(framed(tmp_path, url)))
    assert message.startswith(
        f"schema_registry.url: no registry answers at {url} (GET /subjects: cannot resolve"
    )


def test_a_registry_that_does_not_answer_in_time_is_one_line(tmp_path: Path, registry: Registry) -> None:
    registry.delay_s = 1.0
    config = framed(tmp_path, registry.url, schema_registry__timeout_s=0.1)
    message = one_line(*check(config))
    assert message == (
        f"schema_registry.url: no registry answers at {registry.url} (GET /subjects: no answer within 0.1 s; "
        "5 attempts)"
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ((200, b"[" * 100_000 + b"]" * 100_000), "GET /subjects: the answer is nested too deeply to parse"),
        ((200, {"subjects": []}), "GET /subjects gave no list of subjects"),
    ],
    ids=["nested-too-deeply", "not-a-list"],
)
def test_an_answer_that_is_not_a_registrys_is_one_line(
    tmp_path: Path, registry: Registry, answer: Answer, reason: str
) -> None:
    registry.answers["GET /subjects"] = answer
    message = one_line(*check(framed(tmp_path, registry.url)))
    assert message == (
        f"schema_registry.url: no Confluent-compatible registry answers at {registry.url} ({reason}); "
        "does the URL end in /apis/ccompat/v7?"
    )


def test_a_registry_that_wants_credentials_is_one_line(tmp_path: Path, registry: Registry) -> None:
    registry.answers["GET /subjects"] = (401, {"error_code": 401, "message": "Unauthorized"})
    message = one_line(*check(framed(tmp_path, registry.url)))
    assert message == (
        f"schema_registry.url: the registry at {registry.url} wants credentials (HTTP 401 on /subjects); "
        "set schema_registry.basic_auth_user_info or schema_registry.bearer_token"
    )
    config = framed(tmp_path, registry.url, schema_registry__bearer_token="expired",
                    schema_registry__allow_plaintext_credentials=True)  # fmt: skip
    message = one_line(*check(config))
    assert message == (
        f"schema_registry.bearer_token: the registry at {registry.url} refused the credentials "
        "(HTTP 401 on /subjects)"
    )


def test_a_failing_registry_stops_run_at_start_with_the_same_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/apis/ccompat/v7"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(framed(tmp_path, url))])  # fails before any Kafka client
    assert one_line(code, out.getvalue(), err.getvalue()).startswith(
        f"schema_registry.url: no registry answers at {url}"
    )


def test_credentials_in_the_url_are_not_shown(tmp_path: Path) -> None:
    url = f"http://user:secret@127.0.0.1:{closed_port()}/apis/ccompat/v7"
    message = one_line(*check(framed(tmp_path, url)))
    assert "secret" not in message and "http://***@127.0.0.1:" in message


# --- the broker: run waits for it at start, at most kafka.startup_timeout_s -------------------------------


class FakeAdmin:
    """An admin client whose metadata calls fail with ``failure`` (None: they answer), after ``reported``
    errors reach the error callback; each call costs ``cost_s`` of the fake clock."""

    def __init__(self, clock: list[float], on_error: Any, reported: list[KafkaError], cost_s: float = 1.0):
        self.clock, self.on_error, self.reported, self.cost_s = clock, on_error, reported, cost_s
        self.failure: KafkaError | None = KafkaError(KafkaError._TRANSPORT, "Failed to get metadata")
        self.calls = 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.calls += 1
        self.clock[0] += min(self.cost_s, timeout)
        if self.failure is not None:
            raise KafkaException(self.failure)
        return SimpleNamespace(brokers={1: None}, cluster_id="c1")

    def poll(self, timeout: float = 0) -> int:
        for error in self.reported:
            self.on_error(error)
        return len(self.reported)


def settings_of(tmp_path: Path, **kafka: Any) -> Settings:
    return load_settings(write_config(tmp_path, **{f"kafka__{k}": v for k, v in kafka.items()}))


def fake_admins(reported: list[KafkaError], clock: list[float]) -> tuple[list[FakeAdmin], Any]:
    made: list[FakeAdmin] = []

    def admins(settings: Settings, role: str, on_error: Any) -> FakeAdmin:
        made.append(FakeAdmin(clock, on_error, reported))
        return made[-1]

    return made, admins


def test_a_broker_that_never_answers_fails_after_the_startup_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    refused = ("127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused "
               "(after 0ms in state CONNECT)")  # fmt: skip
    reported = [
        KafkaError(KafkaError._TRANSPORT, refused),
        KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"),
    ]
    made, admins = fake_admins(reported, clock)

    with pytest.raises(ConfigError) as caught:
        settings = settings_of(tmp_path, startup_timeout_s=5, bootstrap_servers="127.0.0.1:1")
        wait_for_broker(settings, admins=admins, clock=lambda: clock[0])

    assert str(caught.value) == (
        "kafka.bootstrap_servers: no broker answered at 127.0.0.1:1 within 5 s (kafka.startup_timeout_s); "
        "last error: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    )
    assert clock[0] == 5 and made[0].calls == 5


def test_a_broker_that_answers_late_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    made, admins = fake_admins([], clock)
    original = FakeAdmin.list_topics

    def late(self: FakeAdmin, topic: str | None = None, timeout: float = -1) -> Any:
        self.failure = None if self.calls >= 2 else self.failure
        return original(self, topic, timeout)

    monkeypatch.setattr(FakeAdmin, "list_topics", late)
    wait_for_broker(settings_of(tmp_path, startup_timeout_s=30), admins=admins, clock=lambda: clock[0])
    assert made[0].calls == 3


def test_a_refused_sasl_authentication_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    said = "b:9093/bootstrap: SASL authentication error: Authentication failed (after 5ms in state AUTH_REQ)"
    made, admins = fake_admins([KafkaError(KafkaError._AUTHENTICATION, said)], clock)

    message = (
        r"^kafka.sasl_username: .* refused the authentication \(SASL authentication error: Authentication"
    )
    with pytest.raises(ConfigError, match=message):
        wait_for_broker(settings_of(tmp_path, startup_timeout_s=30), admins=admins, clock=lambda: clock[0])
    assert made[0].calls == 1


def test_the_admin_client_takes_only_the_connection_keys_of_a_role_table(tmp_path: Path) -> None:
    own = {"client.id": "reader", "fetch.wait.max.ms": 50, "socket.timeout.ms": 9000}
    settings = settings_of(tmp_path, consumer_extra=own, extra={"fetch.wait.max.ms": 70})
    config = admin_config(settings, "consumer")
    assert config["client.id"] == "reader" and str(config["socket.timeout.ms"]) == "9000"
    assert str(config["fetch.wait.max.ms"]) == "70"  # kafka.extra's value: meant for both clients
    only_own = settings_of(tmp_path, consumer_extra={"fetch.wait.max.ms": 50})
    assert "fetch.wait.max.ms" not in admin_config(only_own, "consumer")


# --- run --check --online: topics and permissions as the broker reports them -------------------------------

EVERY_TOPIC_OP = [
    "READ",
    "WRITE",
    "CREATE",
    "DELETE",
    "ALTER",
    "DESCRIBE",
    "DESCRIBE_CONFIGS",
    "ALTER_CONFIGS",
]


def done(value: Any = None, error: KafkaError | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(KafkaException(error))
    else:
        future.set_result(value)
    return future


class DescribingAdmin(FakeAdmin):
    """Answers metadata at once, and describes topics and groups from ``ops`` (name -> operations, or a
    KafkaError); remembers which role asked about what."""

    def __init__(self, role: str, ops: dict[str, Any], asked: list[tuple[str, str]], on_error: Any) -> None:
        super().__init__([0.0], on_error, [])
        self.failure, self.role, self.ops, self.asked = None, role, ops, asked

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Future[Any]]:
        assert kwargs["include_authorized_operations"] is True
        return {name: self._describe(name, partitions=[0, 1]) for name in topics.topic_names}

    def describe_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Future[Any]]:
        return {name: self._describe(name) for name in group_ids}

    def _describe(self, name: str, **extra: Any) -> Future[Any]:
        self.asked.append((self.role, name))
        ops = self.ops.get(name, EVERY_TOPIC_OP)
        if isinstance(ops, KafkaError):
            return done(error=ops)
        operations = None if ops is None else [SimpleNamespace(name=op) for op in ops]
        return done(SimpleNamespace(authorized_operations=operations, **extra))


def online(tmp_path: Path, ops: dict[str, Any]) -> tuple[list[str], list[tuple[str, str]]]:
    asked: list[tuple[str, str]] = []

    def admins(settings: Settings, role: str, on_error: Any) -> DescribingAdmin:
        return DescribingAdmin(role, ops, asked, on_error)

    return list(check_online(load_settings(write_config(tmp_path)), admins=admins)), asked


def test_the_consumer_side_reads_and_commits_and_the_producer_side_writes(tmp_path: Path) -> None:
    lines, asked = online(tmp_path, {"g": ["READ", "DESCRIBE"], "events": ["READ", "DESCRIBE"]})

    every = "(the broker allows every operation: no authorizer, or a super user)"
    assert lines[1:] == [
        "input.topics events: 2 partitions; may read it",
        f"output.topic scores: 2 partitions; may write it {every}",
        f"dead_letter.topic dlq: 2 partitions; may write it {every}",
        "group_id g: may commit offsets for it",
    ]
    assert asked == [("consumer", "events"), ("producer", "scores"), ("producer", "dlq"), ("consumer", "g")]


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        (
            {"events": ["DESCRIBE"]},
            "input.topics: the principal may not read topic 'events' (allowed: DESCRIBE); "
            "grant it READ on the topic",
        ),
        (
            {"dlq": ["READ", "DESCRIBE"]},
            "dead_letter.topic: the principal may not write topic 'dlq' (allowed: "
            "DESCRIBE, READ); grant it WRITE on the topic",
        ),
        (
            {"g": ["DESCRIBE"]},
            "group_id: the principal may not commit offsets for group 'g' (allowed: DESCRIBE); "
            "grant it READ on the group",
        ),
        (
            {
                "scores": KafkaError(
                    KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed"
                )
            },
            "output.topic: cannot describe topic 'scores': Broker: Topic authorization failed",
        ),
        (
            {"scores": KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Broker: Unknown topic or partition")},
            "output.topic: topic 'scores' does not exist (the worker creates no topic)",
        ),
    ],
    ids=["no-read", "no-write", "no-group-read", "not-authorized-to-describe", "missing"],
)
def test_a_missing_permission_or_topic_is_one_line_naming_its_setting(
    tmp_path: Path, ops: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        online(tmp_path, ops)
    assert str(caught.value) == message


def test_a_broker_that_does_not_report_permissions_is_said_so(tmp_path: Path) -> None:
    lines, _ = online(tmp_path, {"events": None})
    assert "input.topics events: 2 partitions; may read it? (the broker does not report permissions)" in lines


def test_online_without_check_is_refused(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--config", str(write_config(tmp_path)), "--online"])
    assert (code, err.getvalue()) == (
        2,
        "rtml-worker: error: --online: only with --check (run --check --online)\n",
    )
