"""The worker's settings: one typed model, read from a TOML file and environment variables (12-factor).

Precedence: environment (``RTML_`` prefix, ``__`` between nested names, e.g.
``RTML_KAFKA__BOOTSTRAP_SERVERS``) over the file given with ``--config`` over defaults. Lists in the
environment are comma separated. Secrets are ``SecretStr`` (never logged or printed) and may come from a file:
``sasl_password_file``, ``ssl_key_password_file``, ``basic_auth_user_info_file``, ``bearer_token_file``.
Validation happens once at start; errors name the field.

librdkafka's dotted-string dicts are built here, at one boundary (`consumer_config`, `producer_config`), so
the rest of the worker only sees typed settings.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from worker.errors import ConfigError
from worker.models.blobs import OBJECT_SCHEMES, location_kind

# Settings that switch off TLS verification are refused outright: a scoring worker has no business with them.
UNSAFE_LIBRDKAFKA = {
    "enable.ssl.certificate.verification": {"false", "f", "0"},  # librdkafka reads "f" as false too
    "ssl.endpoint.identification.algorithm": {"none", ""},
}
# Settings the worker owns: passing them through would break its delivery guarantees.
OWNED_LIBRDKAFKA = {
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "transactional.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",  # librdkafka's own name for acks
    "isolation.level",
    "partition.assignment.strategy",
    "enable.gapless.guarantee",
}
# Keys that load native code into the worker or run a command, refused unless kafka.allow_native_code: a
# config value must not be a way to execute code. ssl.providers is in: OpenSSL reads a provider name as a
# module path too.
NATIVE_CODE_LIBRDKAFKA = {
    "plugin.library.paths": "loads shared libraries into the worker",
    "ssl.engine.location": "loads an OpenSSL engine library",
    "ssl.providers": "loads OpenSSL provider modules",
    "sasl.kerberos.kinit.cmd": "runs a shell command",
}
# Keys a typed setting sets, with that setting: a passthrough would silently override it (security_protocol
# "SASL_SSL" with extra "security.protocol" = "SASL_PLAINTEXT" sent the password in clear). librdkafka's
# aliases included: metadata.broker.list is bootstrap.servers, sasl.mechanisms is sasl.mechanism.
TYPED_LIBRDKAFKA = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "ssl.key.password": "ssl_key_password",
    "group.protocol": "group_protocol",
    "session.timeout.ms": "session_timeout_ms",
    "heartbeat.interval.ms": "heartbeat_interval_ms",
    "max.poll.interval.ms": "max_poll_interval_ms",
    "group.instance.id": "group_instance_id",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Refused(ValueError):
    """A value refused by a model's validator, naming the field it is about (dotted, below that model).

    pydantic locates a model validator's error at the model itself; `_describe` appends ``field`` so the
    message names the setting and its variable (``kafka.extra``, ``RTML_KAFKA__EXTRA``), not just the table.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _secret(value: SecretStr | None, file: Path | None) -> str | None:
    """The secret's value, from the setting or from its file (checked readable at load)."""
    if file is not None:
        return file.read_text().strip()
    return value.get_secret_value() if value is not None else None


def _check_readable(**files: Path | None) -> None:
    for name, file in files.items():
        if file is not None and not os.access(file, os.R_OK):
            raise _Refused(name, f"cannot read {file}")


def split_csv(value: Any) -> Any:
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value


def _check_passthrough(table: str, key: str, value: str, *, allow_native_code: bool) -> None:
    """Refuse one ``kafka.<table>`` property that would weaken security, run code or override the worker."""
    if value.strip().lower() in UNSAFE_LIBRDKAFKA.get(key, ()):
        raise _Refused(table, f"{key} = {value!r} switches off TLS verification; refused")
    if key in OWNED_LIBRDKAFKA:
        raise _Refused(table, f"{key} is set by the worker itself (delivery guarantees depend on it)")
    if key in TYPED_LIBRDKAFKA:
        field = TYPED_LIBRDKAFKA[key]
        raise _Refused(
            table, f"{key} is the typed setting kafka.{field} (env RTML_KAFKA__{field.upper()}): set it there"
        )
    if key in NATIVE_CODE_LIBRDKAFKA and not allow_native_code:
        allow = "kafka.allow_native_code = true (env RTML_KAFKA__ALLOW_NATIVE_CODE)"
        raise _Refused(table, f"{key} {NATIVE_CODE_LIBRDKAFKA[key]}; refused unless {allow}")


def _dotted(field: str) -> str:
    """A setting's librdkafka name: ``session_timeout_ms`` -> ``session.timeout.ms``."""
    return field.replace("_", ".")


def _librdkafka_string(value: Any) -> Any:
    """A TOML or JSON scalar as librdkafka reads it; anything else is left for validation to refuse."""
    if isinstance(value, bool):  # before int: bool is an int, and librdkafka wants "true", not "True"
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


def _librdkafka_strings(value: Any) -> Any:
    return {k: _librdkafka_string(v) for k, v in value.items()} if isinstance(value, dict) else value


# librdkafka properties: values may be strings, numbers or booleans and are normalised to strings, so the
# refusals below judge what librdkafka will read ("enable.ssl.certificate.verification" = false included).
Passthrough = Annotated[dict[str, str], BeforeValidator(_librdkafka_strings)]


class KafkaSettings(_Strict):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None
    ssl_ca_location: Path | None = None
    ssl_certificate_location: Path | None = None
    ssl_key_location: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None
    # Group membership. "classic" (cooperative-sticky) stays the default: failover time is then the client's
    # session_timeout_ms, which any broker lets us lower (group.min.session.timeout.ms, default 6 s). With
    # "consumer" (KIP-848, Kafka >= 4.0) it is the broker's group.consumer.session.timeout.ms, default 45 s
    # with a broker minimum (group.consumer.min.session.timeout.ms) of 45 s: a killed replica's partitions
    # wait ~45 s unless the broker's minimum and the group's consumer.session.timeout.ms are lowered.
    group_protocol: Literal["classic", "consumer"] = "classic"
    # Classic protocol only (librdkafka refuses both with "consumer", where the broker sets them): how long a
    # silent member keeps its partitions (a SIGKILLed replica's wait 10 s, not the 45 s default), and how
    # often it says it is alive (below a third of the session timeout, so one lost heartbeat is not fatal).
    session_timeout_ms: int = Field(10_000, ge=1, le=3_600_000)
    heartbeat_interval_ms: int = Field(1_000, ge=1, le=3_600_000)
    # A member that does not poll for this long is dropped. The loop polls every turn, even when paused or
    # draining, so this only catches a wedged process (which /healthz reports sooner: stall_after_s).
    max_poll_interval_ms: int = Field(300_000, ge=1, le=86_400_000)
    # Static membership (unique per replica, stable across its restarts, e.g. the StatefulSet pod name): a
    # replica back within session_timeout_ms gets its partitions back without a rebalance. Pair it with a
    # longer session timeout (e.g. 60 s): a static member does not leave the group on close, so a stopped or
    # killed one's partitions wait for the session timeout.
    group_instance_id: str | None = Field(None, min_length=1)
    # How long `run` waits at start for the broker to answer before failing (naming bootstrap_servers).
    startup_timeout_s: float = Field(30.0, gt=0)
    # Anything else librdkafka understands (strings, numbers or booleans): to both clients (e.g.
    # "socket.keepalive.enable"), or to one of them (e.g. "fetch.wait.max.ms" for the consumer).
    extra: Passthrough = Field(default_factory=dict)
    consumer_extra: Passthrough = Field(default_factory=dict)
    producer_extra: Passthrough = Field(default_factory=dict)
    # Lets the passthrough tables name native code for librdkafka to load or commands for it to run
    # (plugin.library.paths, ssl.engine.location, ssl.providers, sasl.kerberos.kinit.cmd).
    allow_native_code: bool = False

    @model_validator(mode="after")
    def _secrets_and_safety(self) -> KafkaSettings:
        _check_readable(
            sasl_password_file=self.sasl_password_file, ssl_key_password_file=self.ssl_key_password_file
        )
        passthrough = {"extra": self.extra, "consumer_extra": self.consumer_extra,
                       "producer_extra": self.producer_extra}  # fmt: skip
        for name, properties in passthrough.items():
            for key, value in properties.items():
                _check_passthrough(name, key.strip().lower(), value, allow_native_code=self.allow_native_code)
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise _Refused("sasl_mechanism", f"required with security_protocol {self.security_protocol}")
        return self

    @model_validator(mode="after")
    def _group_timing(self) -> KafkaSettings:
        if self.group_protocol == "consumer":
            self._no_client_session()
            return self
        session, heartbeat = self.session_timeout_ms, self.heartbeat_interval_ms
        if heartbeat * 3 >= session:
            limit = f"a third of kafka.session_timeout_ms ({session})"
            raise _Refused("heartbeat_interval_ms", f"{heartbeat} must be below {limit}")
        if self.max_poll_interval_ms < session:  # librdkafka refuses it when it creates the consumer
            limit = f"kafka.session_timeout_ms ({session})"
            raise _Refused("max_poll_interval_ms", f"{self.max_poll_interval_ms} must be at least {limit}")
        return self

    def _no_client_session(self) -> None:
        """KIP-848: a session setting given here would be silently ignored; refuse it instead."""
        for name in sorted({"session_timeout_ms", "heartbeat_interval_ms"} & self.model_fields_set):
            where = f"the broker's group.consumer.{_dotted(name)}"
            raise _Refused(name, f'a broker-side group setting with group_protocol "consumer" ({where})')

    def group_config(self) -> dict[str, Any]:
        """The consumer's group membership properties (the session ones only where the client sets them)."""
        config: dict[str, Any] = {"max.poll.interval.ms": self.max_poll_interval_ms}
        if self.group_protocol == "classic":
            config.update({"session.timeout.ms": self.session_timeout_ms,
                           "heartbeat.interval.ms": self.heartbeat_interval_ms})  # fmt: skip
        if self.group_instance_id is not None:
            config["group.instance.id"] = self.group_instance_id
        return config

    def client_config(self, role: Literal["consumer", "producer"]) -> dict[str, Any]:
        config: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers,
                                  "security.protocol": self.security_protocol}  # fmt: skip
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": _secret(self.sasl_password, self.sasl_password_file),
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": _secret(self.ssl_key_password, self.ssl_key_password_file),
        }
        config.update({k: str(v) for k, v in optional.items() if v is not None})
        config.update(self.extra)
        config.update(self.consumer_extra if role == "consumer" else self.producer_extra)
        return config


class RegistrySettings(_Strict):
    url: str | None = None  # None: plain Avro with schemas from files, no registry
    basic_auth_user_info: SecretStr | None = None  # "user:password"
    basic_auth_user_info_file: Path | None = None
    bearer_token: SecretStr | None = None
    bearer_token_file: Path | None = None
    timeout_s: float = Field(5.0, gt=0)
    # The streaming loop's registry calls end within this, retries included; the loop retries later itself.
    call_budget_s: float = Field(6.0, gt=0)
    # How long `run` waits at start for a registry that does not answer (a replica restarted in an outage).
    startup_timeout_s: float = Field(30.0, ge=0)
    auto_register: bool = True
    # Credentials with an http:// url travel in clear: refused unless meant (a registry on localhost, a test).
    allow_plaintext_credentials: bool = False

    @model_validator(mode="after")
    def _files_and_transport(self) -> RegistrySettings:
        _check_readable(basic_auth_user_info_file=self.basic_auth_user_info_file,
                        bearer_token_file=self.bearer_token_file)  # fmt: skip
        credential = self._credential_set()
        plain = self.url is not None and urlsplit(self.url).scheme.lower() == "http"
        if plain and credential is not None and not self.allow_plaintext_credentials:
            allow = "schema_registry.allow_plaintext_credentials = true"
            env = "RTML_SCHEMA_REGISTRY__ALLOW_PLAINTEXT_CREDENTIALS"
            reason = f"http:// would send schema_registry.{credential} in clear"
            raise _Refused("url", f"{reason}; use https:// or set {allow} (env {env})")
        return self

    def _credential_set(self) -> str | None:
        """The name of the first credential setting given, if any."""
        names = ("basic_auth_user_info", "basic_auth_user_info_file", "bearer_token", "bearer_token_file")
        return next((name for name in names if getattr(self, name) is not None), None)

    def user_info(self) -> str | None:
        return _secret(self.basic_auth_user_info, self.basic_auth_user_info_file)

    def token(self) -> str | None:
        return _secret(self.bearer_token, self.bearer_token_file)


class InputSettings(_Strict):
    topics: Annotated[list[str], NoDecode] = Field(min_length=1)
    # The graph's input contract: every writer schema is resolved to it. With `deployment` the version's own
    # is used, and this one only as the default of `deploy publish --reader-schema`.
    reader_schema: Path | None = None
    framing: Literal["confluent", "plain"] = "confluent"
    writer_schema: Path | None = None  # plain framing: the producers' schema (default: the reader schema)

    _csv = field_validator("topics", mode="before")(split_csv)


class OutputSettings(_Strict):
    topic: str
    schema_path: Path | None = Field(None, alias="schema")  # with `deployment`: as reader_schema
    framing: Literal["confluent", "plain"] = "confluent"
    # "source": the score goes to the input's partition number (mod the output's count), which keeps every
    # input partition's order and key locality; "key": librdkafka's partitioner on the carried-over key.
    partitioning: Literal["source", "key"] = "source"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DeadLetterSettings(_Strict):
    topic: str


class DeploymentsSettings(_Strict):
    # The compacted topic of every deployment's versions (worker.deploy), made at the first publish.
    topic: str = Field("_rtml_deployments", min_length=1)
    # Where each replica following a deployment reports what it runs (worker.deploy.status).
    status_topic: str = Field("_rtml_deployment_status", min_length=1)


class BatchSettings(_Strict):
    max_records: int = Field(1000, ge=1, le=100_000)
    # 0: natural batching, a batch is what arrived while the previous one was processed (lowest latency;
    # batches grow by themselves under load). Above 0: wait up to this long for a batch to fill.
    max_wait_ms: int = Field(0, ge=0, le=60_000)
    # Outputs produced but not yet acknowledged before partitions are paused (backpressure).
    max_in_flight: int = Field(20_000, ge=1)


class BreakerSettings(_Strict):
    enabled: bool = True
    max_consecutive_invalid: int = Field(1000, ge=1)
    max_invalid_ratio: float = Field(0.5, gt=0, le=1)
    window_records: int = Field(1000, ge=1)  # the ratio is judged over this many records of a partition


_TRANSACTIONAL_ID_REQUIRED = (
    'required with delivery "exactly-once": stable per replica and unique across replicas (two replicas '
    "sharing one fence each other), e.g. the pod name of a StatefulSet passed as RTML_TRANSACTIONAL_ID"
)


def check_store_location(value: str) -> str:
    """A model store location: a folder, ``file://``, or an object-store URL (see worker.models.blobs)."""
    scheme = urlsplit(value).scheme.lower()
    if location_kind(value) == "folder" and scheme not in ("", "file") and len(scheme) > 1:
        # len > 1: "C:" of a Windows path is no scheme
        raise ValueError(f"scheme {scheme}:// is none of a folder, file://, {', '.join(OBJECT_SCHEMES)}")
    return value


class EnvFirst(BaseSettings):
    """Settings read from the environment first, then from the file's values (``load_as``'s kwargs)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class Settings(EnvFirst):
    """Everything ``rtml-worker run`` needs. Field names are the keys of the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="RTML_", env_nested_delimiter="__", extra="forbid", frozen=True, populate_by_name=True
    )

    kafka: KafkaSettings = KafkaSettings()
    schema_registry: RegistrySettings = RegistrySettings()
    group_id: str = Field(min_length=1)
    input: InputSettings
    output: OutputSettings
    dead_letter: DeadLetterSettings
    # The graph file, or the deployment (worker.deploy) whose active version the replica follows: one of them.
    graph: Path | None = None
    deployment: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    # A folder, or object storage shared by machines: s3://bucket/prefix, gs://..., az://... (credentials from
    # the cloud's standard environment variables and files, never from this value).
    model_store: str = Field(".models", min_length=1)
    model_cache: Path | None = None  # an object store's local read-through cache (default: see ModelStore)
    deployments: DeploymentsSettings = DeploymentsSettings()
    allow_custom_domains: bool = False
    intra_op_num_threads: int = Field(1, ge=1)
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    # Exactly-once requires it: stable per replica, so a restarted replica fences its old self, and unique, so
    # two replicas never fence each other (e.g. a StatefulSet's pod name). No default: "<group_id>-<hostname>"
    # was the same for two replicas on one host, and the second died with a bare _FENCED.
    transactional_id: str | None = Field(None, min_length=1)
    # A transaction left open by a killed replica blocks read_committed readers until it times out.
    transaction_timeout_ms: int = Field(15_000, ge=1000)
    # Negative control for the delivery tests only: auto-commit with offsets stored on receipt (loses data).
    unsafe_commit_on_receipt: bool = False
    batch: BatchSettings = BatchSettings()
    breaker: BreakerSettings = BreakerSettings()
    commit_interval_ms: int = Field(1000, ge=10)
    revoke_budget_ms: int = Field(10_000, ge=0)  # finishing in-flight work when partitions are revoked
    shutdown_budget_ms: int = Field(20_000, ge=0)
    # Loopback by default: /metrics and the probes are not for the network unless asked. Container images set
    # RTML_METRICS_HOST=0.0.0.0, as probes and Prometheus reach the worker from outside its network namespace.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9100, ge=0, le=65535)  # 0: pick a free port (tests)
    stall_after_s: float = Field(30.0, gt=0)  # /healthz fails when the loop has not turned for this long
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _store = field_validator("model_store")(check_store_location)

    @model_validator(mode="after")
    def _graph_or_deployment(self) -> Settings:
        if (self.graph is None) == (self.deployment is None):
            raise _Refused("graph", "exactly one of graph (a file) and deployment (a name) is needed")
        if self.graph is not None:
            for name, value in (("input.reader_schema", self.input.reader_schema),
                                ("output.schema", self.output.schema_path)):  # fmt: skip
                if value is None:
                    raise _Refused(name, "required with graph (a deployment's version carries its own)")
        return self

    @model_validator(mode="after")
    def _transactions(self) -> Settings:
        if self.delivery == "exactly-once" and self.transactional_id is None:
            raise _Refused("transactional_id", _TRANSACTIONAL_ID_REQUIRED)
        return self

    def effective_transactional_id(self) -> str:
        """The producer's transactional.id; "" without exactly-once (no transactions, nothing to fence)."""
        return (self.transactional_id or "") if self.delivery == "exactly-once" else ""

    def consumer_config(self) -> dict[str, Any]:
        config = self.kafka.client_config("consumer")
        config.update({
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        })  # fmt: skip
        config.update(self.kafka.group_config())
        if self.kafka.group_protocol == "consumer":
            config["group.protocol"] = "consumer"  # KIP-848: the broker assigns; no client-side strategy
        else:
            config["partition.assignment.strategy"] = "cooperative-sticky"
        return config

    def producer_config(self) -> dict[str, Any]:
        # Tunable defaults first (kafka.extra and producer_extra may change them), then the guarantees.
        config: dict[str, Any] = {"linger.ms": 5, "compression.type": "lz4"}
        if self.delivery == "at-least-once":
            # No local give-up: an output the broker cannot take yet waits (the loop pauses its input) and
            # goes out in order once it can. A finite value makes a timed-out output a rewind, and librdkafka
            # may then deliver later outputs of its partition first (a gap: reordering on the replay).
            config["message.timeout.ms"] = 0
        config.update(self.kafka.client_config("producer"))
        # Without enable.gapless.guarantee: one output the broker rejects (too large for its topic) must not
        # fail the producer; every output has its own delivery report and the loop handles each failure.
        config.update({"enable.idempotence": True, "acks": "all"})
        if self.delivery == "exactly-once":
            config["transactional.id"] = self.effective_transactional_id()
            config["transaction.timeout.ms"] = self.transaction_timeout_ms
        return config


def load_settings(path: Path | None = None) -> Settings:
    """Read and validate the settings; ConfigError names the first bad field. Called once at start."""
    return load_as(Settings, path)


S = TypeVar("S", bound=BaseSettings)


def load_as(cls: type[S], path: Path | None = None) -> S:
    """The settings of ``cls`` from the TOML file at ``path`` and the environment (which wins)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", field="--config") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", field="--config") from exc
    try:
        return cls(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # a variable that does not parse, e.g. bad JSON in RTML_KAFKA__EXTRA
        raise ConfigError(f"invalid settings: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc, message = [str(p) for p in error["loc"]], error["msg"]
        refused = error.get("ctx", {}).get("error")
        if isinstance(refused, _Refused):
            loc, message = [*loc, *refused.field.split(".")], str(refused)
        where = ".".join(loc) or "settings"
        # A variable stops at the first part no variable can name: a list index, a dotted librdkafka key.
        variable = "__".join(itertools.takewhile(str.isidentifier, loc)).upper()
        lines.append(f"{where}: {message} (env RTML_{variable})")
    return "invalid settings:\n  " + "\n  ".join(lines)
