"""Before the worker joins its group: does the broker answer?

``wait_for_broker`` is called by ``run`` before the Worker is built: a broker that does not answer within
``kafka.startup_timeout_s`` (down, unresolvable, a TLS mismatch) is one ``ConfigError`` naming
``kafka.bootstrap_servers``, and a refused SASL authentication one naming the SASL settings, not a worker
that retries forever. It blocks for at most ``kafka.startup_timeout_s``.

librdkafka's own lines go through ``worker.librdkafka`` (JSON logs, repeats suppressed), never to stderr.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from worker.errors import ConfigError
from worker.runtime.clients import librdkafka_logger
from worker.runtime.config import Settings

Role = Literal["consumer", "producer"]
# Of a role's own passthrough table, the admin client takes what says how to connect and as whom; the rest
# (fetch.*, linger.ms, ...) belongs to the other client type, and librdkafka would warn about each key.
_CONNECTION = ("bootstrap.", "security.", "sasl.", "ssl.", "socket.", "client.", "broker.", "reconnect.",
               "oauthbearer.", "connections.")  # fmt: skip
_NOISE = re.compile(
    r"^\S+/(bootstrap|\d+): | \(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)"
)


class Admin(Protocol):
    """The AdminClient calls made here (``confluent_kafka.admin.AdminClient`` satisfies it)."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...
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
