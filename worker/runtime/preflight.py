"""Before the worker joins its group: does the broker answer, and (``run --check --online``) do the topics
exist and may this principal use them?

``wait_for_broker`` is called by ``run`` before the Worker is built: a broker that does not answer within
``kafka.startup_timeout_s`` (down, unresolvable, a TLS mismatch) is one ``ConfigError`` naming
``kafka.bootstrap_servers``, and a refused SASL authentication one naming the SASL settings, not a worker
that retries forever. ``check_online`` adds the topics (their
partition counts; a missing one named by the setting that names it) and the principal's permissions, as the
broker reports them (``include_authorized_operations``): read the input topics and commit for the group with
the consumer's settings, write the output and dead-letter topics with the producer's. It describes only:
nothing is produced, committed or created. Both block, for at most ``kafka.startup_timeout_s`` per call.

librdkafka's own lines go through ``worker.librdkafka`` (JSON logs, repeats suppressed), never to stderr.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from worker.errors import ConfigError
from worker.runtime.clients import librdkafka_logger
from worker.runtime.config import Settings

Role = Literal["consumer", "producer"]
# Of a role's own passthrough table, the admin client takes what says how to connect and as whom; the rest
# (fetch.*, linger.ms, ...) belongs to the other client type, and librdkafka would warn about each key.
_CONNECTION = ("bootstrap.", "security.", "sasl.", "ssl.", "socket.", "client.", "broker.", "reconnect.",
               "oauthbearer.", "connections.")  # fmt: skip
# What a resource type's ACLs can grant: a broker without an authorizer reports all of it.
_ALL_OPS = {
    "topic": {"READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"},
    "group": {"READ", "DELETE", "DESCRIBE", "DESCRIBE_CONFIGS", "ALTER_CONFIGS"},
}
_NOISE = re.compile(
    r"^\S+/(bootstrap|\d+): | \(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)"
)


class Admin(Protocol):
    """The AdminClient calls made here (``confluent_kafka.admin.AdminClient`` satisfies it)."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
    def describe_topics(self, topics: TopicCollection, **kwargs: Any) -> dict[str, Any]: ...
    def describe_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]: ...
    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]: ...
    def poll(self, timeout: float = ...) -> int: ...


AdminFactory = Callable[[Settings, Role, Callable[[KafkaError], None]], Admin]


def admin_config(settings: Settings, role: Role) -> dict[str, Any]:
    """librdkafka's settings for an admin client that connects as ``role`` does, and as the same principal."""
    kafka = settings.kafka
    config = kafka.client_config(role)
    own = kafka.consumer_extra if role == "consumer" else kafka.producer_extra
    for key in own:
        if not key.startswith(_CONNECTION):
            if key in kafka.extra:
                config[key] = kafka.extra[key]
            else:
                del config[key]
    return config


def admin_client(settings: Settings, role: Role, on_error: Callable[[KafkaError], None]) -> Admin:
    """An AdminClient for ``role`` (see ``admin_config``); librdkafka's errors go to ``on_error``."""
    hooks: dict[str, Any] = {"logger": librdkafka_logger(), "error_cb": on_error}
    return AdminClient({**admin_config(settings, role), **hooks})


def wait_for_broker(
    settings: Settings, *, admins: AdminFactory = admin_client, clock: Callable[[], float] = time.monotonic
) -> None:
    """Block until the broker answers a metadata request (``run``, before the Worker is built).

    Raises ConfigError (field ``kafka.bootstrap_servers``) after ``kafka.startup_timeout_s`` without an
    answer, with librdkafka's last reason, or at once when the broker refuses the SASL authentication.
    """
    _connect(settings, "consumer", admins, clock)


def _connect(
    settings: Settings, role: Role, admins: AdminFactory, clock: Callable[[], float]
) -> tuple[Admin, Any]:
    """An admin client for ``role`` and the broker's first metadata answer to it."""
    kafka = settings.kafka
    reported: list[KafkaError] = []
    admin = admins(settings, role, reported.append)
    deadline = clock() + kafka.startup_timeout_s
    while True:
        try:
            return admin, admin.list_topics(timeout=max(0.1, min(1.0, deadline - clock())))
        except KafkaException as exc:
            failed: KafkaError = exc.args[0]
        admin.poll(0)  # serves the error callbacks
        refused = [e for e in reported if e.code() == KafkaError._AUTHENTICATION]
        if refused:
            raise ConfigError(f"the broker at {kafka.bootstrap_servers} refused the authentication "
                              f"({_words(refused[-1])}); check kafka.sasl_mechanism, sasl_username and "
                              "sasl_password", field="kafka.sasl_username")  # fmt: skip
        if clock() >= deadline:
            said = [e for e in reported if e.code() != KafkaError._ALL_BROKERS_DOWN] or [failed]
            raise ConfigError(f"no broker answered at {kafka.bootstrap_servers} within "
                              f"{kafka.startup_timeout_s:g} s (kafka.startup_timeout_s); last error: "
                              f"{_words(said[-1])}", field="kafka.bootstrap_servers")  # fmt: skip


def _words(error: KafkaError) -> str:
    """librdkafka's reason without its broker prefix and timings: 'Connect to ... failed: ...'."""
    return _NOISE.sub("", error.str())


@dataclass(frozen=True)
class _Need:
    """A topic (or the group) the worker uses, the setting that names it, and what it must be allowed."""

    setting: str
    name: str
    operation: Literal["READ", "WRITE"]
    role: Role
    doing: str  # the operation, in words


def check_online(settings: Settings, *, admins: AdminFactory = admin_client) -> Iterator[str]:
    """The broker, each topic and the group, one ``ok`` line each as it is checked; raises ConfigError
    naming the setting at the first that fails."""
    timeout_s = settings.kafka.startup_timeout_s
    consumer, metadata = _connect(settings, "consumer", admins, time.monotonic)
    # The producer's settings may connect as another principal: the topics it writes are checked with them.
    producer, _ = _connect(settings, "producer", admins, time.monotonic)
    brokers = len(metadata.brokers)
    yield (f"kafka.bootstrap_servers {settings.kafka.bootstrap_servers} answers: "
           f"{brokers} broker{'s' * (brokers != 1)}, cluster {metadata.cluster_id}")  # fmt: skip
    output, dead_letter = settings.output.topic, settings.dead_letter.topic
    needs = [_Need("input.topics", t, "READ", "consumer", "read") for t in settings.input.topics]
    needs += [_Need("output.topic", output, "WRITE", "producer", "write"),
              _Need("dead_letter.topic", dead_letter, "WRITE", "producer", "write")]  # fmt: skip
    for role, admin in (("consumer", consumer), ("producer", producer)):
        mine = [n for n in needs if n.role == role]
        names = list(dict.fromkeys(n.name for n in mine))
        found = admin.describe_topics(TopicCollection(names), include_authorized_operations=True,
                                      request_timeout=timeout_s)  # fmt: skip
        for need in mine:
            yield _topic(need, found[need.name], timeout_s)
    yield _group(settings, consumer, timeout_s)


def _described(future: Any, need: _Need, where: str, timeout_s: float) -> Any:
    """The description ``future`` holds; a missing topic or a failed describe is a ConfigError."""
    try:
        return future.result(timeout=timeout_s)
    except TimeoutError:
        raise ConfigError(f"no description of {where} within {timeout_s:g} s", field=need.setting) from None
    except KafkaException as exc:
        error: KafkaError = exc.args[0]
        if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            message = f"{where} does not exist (the worker creates no topic)"
            raise ConfigError(message, field=need.setting) from None
        raise ConfigError(f"cannot describe {where}: {error.str()}", field=need.setting) from None


def _topic(need: _Need, future: Any, timeout_s: float) -> str:
    where = f"topic {need.name!r}"
    description = _described(future, need, where, timeout_s)
    partitions = len(description.partitions)
    allowed = _allowed(description.authorized_operations, need, "topic", where)
    return f"{need.setting} {need.name}: {partitions} partition{'s' * (partitions != 1)}; {allowed}"


def _group(settings: Settings, admin: Admin, timeout_s: float) -> str:
    need = _Need("group_id", settings.group_id, "READ", "consumer", "commit offsets for")
    where = f"group {need.name!r}"
    found = admin.describe_consumer_groups([need.name], include_authorized_operations=True,
                                           request_timeout=timeout_s)  # fmt: skip
    description = _described(found[need.name], need, where, timeout_s)
    return f"group_id {need.name}: {_allowed(description.authorized_operations, need, 'group', where)}"


def _allowed(operations: list[Any] | None, need: _Need, kind: str, where: str) -> str:
    """What the principal may do, in words; raises ConfigError when it may not do what the worker needs."""
    if operations is None:  # a broker before Kafka 2.3 does not say
        return f"may {need.doing} it? (the broker does not report permissions)"
    granted = {str(getattr(op, "name", op)) for op in operations}  # AclOperation members
    if not granted & {need.operation, "ALL"}:
        allowed = ", ".join(sorted(granted)) or "nothing"
        raise ConfigError(f"the principal may not {need.doing} {where} (allowed: {allowed}); grant it "
                          f"{need.operation} on the {kind}", field=need.setting)  # fmt: skip
    if granted >= _ALL_OPS[kind]:
        return f"may {need.doing} it (the broker allows every operation: no authorizer, or a super user)"
    return f"may {need.doing} it"
