"""Settings: TOML file and RTML_* environment, errors that name the field and its variable, refused
librdkafka keys, secrets kept out of repr and error text, and the librdkafka dicts built at the boundary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from worker.errors import ConfigError
from worker.runtime.config import OWNED_LIBRDKAFKA, TYPED_LIBRDKAFKA, Settings, load_settings

SECRET = "s3cr3t-Pa55-from-a-file"
BASE = """
group_id = "scorers"
graph = "graphs/iris.json"

[input]
topics = ["events"]
reader_schema = "schemas/in.avsc"
framing = "plain"

[output]
topic = "scores"
schema = "schemas/out.avsc"

[dead_letter]
topic = "dlq"

[kafka]
bootstrap_servers = "file-broker:9092"
sasl_username = "svc"

[batch]
max_records = 500
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RTML_* variable of the machine running the tests leaks in."""
    for name in [n for n in os.environ if n.upper().startswith("RTML_")]:
        monkeypatch.delenv(name)


def config(tmp_path: Path, extra: str = "", base: str = BASE) -> Path:
    path = tmp_path / "worker.toml"
    path.write_text(base + "\n" + extra)
    return path


def top_level(tmp_path: Path, keys: str) -> Path:
    """The base file with ``keys`` before its first table."""
    return config(tmp_path, base=BASE.replace("\n[input]", f"\n{keys}\n\n[input]", 1))


def error_of(path: Path | None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    return caught.value


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "sasl.password"
    path.write_text(SECRET + "\n")
    return path


# --- sources and precedence ------------------------------------------------------------------------------


def test_the_file_is_read_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    s = load_settings(config(tmp_path))
    assert s.group_id == "scorers"
    assert s.input.topics == ["events"] and s.input.framing == "plain"
    assert s.input.reader_schema == Path("schemas/in.avsc")
    assert s.output.schema_path == Path("schemas/out.avsc")
    assert s.kafka.bootstrap_servers == "file-broker:9092"
    assert s.batch.max_records == 500
    assert s.batch.max_wait_ms == 0  # the default (natural batching), next to a value from the same table
    assert s.delivery == "at-least-once" and s.breaker.enabled


def test_metrics_listen_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    assert load_settings(config(tmp_path)).metrics_host == "127.0.0.1"  # a container image sets 0.0.0.0


def test_the_environment_overrides_the_file_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_GROUP_ID", "from-env")
    monkeypatch.setenv("RTML_KAFKA__BOOTSTRAP_SERVERS", "env-broker:9092")
    monkeypatch.setenv("RTML_BATCH__MAX_WAIT_MS", "5")
    monkeypatch.setenv("RTML_BREAKER__ENABLED", "false")
    s = load_settings(config(tmp_path))
    assert s.group_id == "from-env"
    assert s.kafka.bootstrap_servers == "env-broker:9092"
    assert s.kafka.sasl_username == "svc"  # a nested variable does not wipe the rest of the file's table
    assert (s.batch.max_records, s.batch.max_wait_ms) == (500, 5)
    assert not s.breaker.enabled


def test_topics_from_the_environment_are_comma_separated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_INPUT__TOPICS", " clicks, views ,,orders ")
    assert load_settings(config(tmp_path)).input.topics == ["clicks", "views", "orders"]


def test_settings_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RTML_GROUP_ID": "g",
        "RTML_GRAPH": "g.json",
        "RTML_INPUT__TOPICS": "a",
        "RTML_INPUT__READER_SCHEMA": "in.avsc",
        "RTML_OUTPUT__TOPIC": "out",
        "RTML_OUTPUT__SCHEMA": "out.avsc",
        "RTML_DEAD_LETTER__TOPIC": "dlq",
        "RTML_DELIVERY": "exactly-once",
        "RTML_TRANSACTIONAL_ID": "g-0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.input.topics, s.output.schema_path, s.delivery) == (["a"], Path("out.avsc"), "exactly-once")


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(config(tmp_path))
    with pytest.raises(ValueError, match="frozen"):
        s.group_id = "other"  # type: ignore[misc]


# --- errors name the field and its variable --------------------------------------------------------------


def test_a_bad_value_names_the_dotted_field_and_the_variable(tmp_path: Path) -> None:
    error = error_of(config(tmp_path, base=BASE.replace("max_records = 500", "max_records = 0")))
    assert "batch.max_records:" in str(error)
    assert "RTML_BATCH__MAX_RECORDS" in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # pydantic's input echo stays out


@pytest.mark.parametrize("store", ["s3://rtml/models", "gs://b/m", "az://c/m", "/srv/models", "file:///m"])
def test_the_model_store_is_a_folder_or_an_object_store_url(tmp_path: Path, store: str) -> None:
    s = load_settings(top_level(tmp_path, f'model_store = "{store}"\nmodel_cache = "/var/cache/m"'))
    assert (s.model_store, s.model_cache) == (store, Path("/var/cache/m"))


def test_a_model_store_of_another_scheme_is_refused_by_name(tmp_path: Path) -> None:
    error = error_of(top_level(tmp_path, 'model_store = "https://example.com/models"'))
    assert "model_store:" in str(error) and "https://" in str(error) and "RTML_MODEL_STORE" in str(error)


def test_missing_fields_are_each_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_GROUP_ID", "g")
    message = str(error_of(None))
    for field, variable in [
        ("input", "RTML_INPUT"),
        ("output", "RTML_OUTPUT"),
        ("dead_letter", "RTML_DEAD_LETTER"),
    ]:
        assert f"{field}: Field required (env {variable})" in message
    assert "group_id" not in message


def test_a_graph_file_or_a_deployment_exactly_one(tmp_path: Path) -> None:
    neither = error_of(config(tmp_path, base=BASE.replace('graph = "graphs/iris.json"', "")))
    assert "graph: exactly one of graph (a file) and deployment (a name) is needed" in str(neither)
    both = error_of(top_level(tmp_path, 'deployment = "cars"'))
    assert "exactly one of graph" in str(both)


def test_a_deployments_replica_needs_no_graph_or_schemas(tmp_path: Path) -> None:
    base = BASE.replace('graph = "graphs/iris.json"', 'deployment = "cars"')
    base = base.replace('reader_schema = "schemas/in.avsc"\n', "").replace(
        'schema = "schemas/out.avsc"\n', ""
    )
    s = load_settings(config(tmp_path, base=base + '\n[deployments]\ntopic = "_cars"\n'))
    assert (s.deployment, s.graph, s.deployments.topic) == ("cars", None, "_cars")
    assert s.input.reader_schema is None and s.output.schema_path is None


def test_a_graph_file_needs_both_schemas(tmp_path: Path) -> None:
    error = error_of(config(tmp_path, base=BASE.replace('reader_schema = "schemas/in.avsc"\n', "")))
    assert "input.reader_schema: required with graph" in str(error)


def test_a_bad_value_from_the_environment_names_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_DELIVERY", "exactly-twice")
    message = str(error_of(config(tmp_path)))
    assert "delivery:" in message and "RTML_DELIVERY" in message


def test_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    message = str(error_of(config(tmp_path, base=BASE.replace("[batch]", "[batch]\nmax_recrods = 1"))))
    assert "batch.max_recrods:" in message and "not permitted" in message


def test_a_bad_json_value_in_the_environment_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_KAFKA__EXTRA", f'{{"sasl.password": "{SECRET}"')  # not JSON: unclosed
    error = error_of(config(tmp_path))
    assert 'field "kafka"' in str(error)
    assert SECRET not in str(error) and error.__cause__ is None and error.__suppress_context__


def test_an_unreadable_config_file_and_invalid_toml(tmp_path: Path) -> None:
    missing = error_of(tmp_path / "nope.toml")
    assert missing.field == "--config" and "nope.toml" in str(missing)
    broken = error_of(config(tmp_path, "[batch\nmax_records = 1"))
    assert broken.field == "--config" and "not valid TOML" in str(broken)


# --- refused librdkafka settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enable.ssl.certificate.verification", "false"),
        ("enable.ssl.certificate.verification", " FALSE "),
        ("enable.ssl.certificate.verification", "0"),
        ("enable.ssl.certificate.verification", "f"),  # librdkafka reads t/f as booleans too
        ("enable.ssl.certificate.verification", "F"),
        ("ssl.endpoint.identification.algorithm", "none"),
        ("ssl.endpoint.identification.algorithm", "None"),
        ("ssl.endpoint.identification.algorithm", ""),
    ],
)
def test_switching_off_tls_verification_is_refused(tmp_path: Path, key: str, value: str) -> None:
    message = str(error_of(config(tmp_path, f'[kafka.extra]\n"{key}" = "{value}"')))
    assert f"kafka.extra: {key} = {value!r} switches off TLS verification" in message
    assert "(env RTML_KAFKA__EXTRA)" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("enable.ssl.certificate.verification", "true"), ("ssl.endpoint.identification.algorithm", "https")],
)
def test_keeping_tls_verification_on_is_allowed(tmp_path: Path, key: str, value: str) -> None:
    s = load_settings(config(tmp_path, f'[kafka.extra]\n"{key}" = "{value}"'))
    assert s.consumer_config()[key] == value


def test_tls_off_from_the_environment_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_KAFKA__EXTRA", json.dumps({"enable.ssl.certificate.verification": "false"}))
    message = str(error_of(config(tmp_path)))
    assert "kafka.extra:" in message and "TLS verification" in message and "RTML_KAFKA__EXTRA" in message


@pytest.mark.parametrize("key", sorted(OWNED_LIBRDKAFKA))
@pytest.mark.parametrize("table", ["extra", "consumer_extra", "producer_extra"])
def test_keys_the_worker_owns_are_refused(tmp_path: Path, key: str, table: str) -> None:
    message = str(error_of(config(tmp_path, f'[kafka.{table}]\n"{key}" = "x"')))
    assert f"kafka.{table}: {key} is set by the worker itself" in message
    assert f"(env RTML_KAFKA__{table.upper()})" in message


def test_a_passthrough_cannot_downgrade_the_typed_security_protocol(tmp_path: Path) -> None:
    base = sasl(tmp_path, 'sasl_password = "pw"')  # security_protocol = "SASL_SSL"
    extra = '[kafka.extra]\n"security.protocol" = "SASL_PLAINTEXT"'
    message = str(error_of(config(tmp_path, extra, base=base)))
    assert "kafka.extra: security.protocol is the typed setting kafka.security_protocol" in message
    assert "RTML_KAFKA__SECURITY_PROTOCOL" in message and "(env RTML_KAFKA__EXTRA)" in message


@pytest.mark.parametrize(("key", "field"), sorted(TYPED_LIBRDKAFKA.items()))
@pytest.mark.parametrize("table", ["extra", "consumer_extra", "producer_extra"])
def test_keys_of_typed_settings_are_refused_naming_the_setting(
    tmp_path: Path, key: str, field: str, table: str
) -> None:
    message = str(error_of(config(tmp_path, f'[kafka.{table}]\n"{key}" = "x"')))
    assert f"kafka.{table}: {key} is the typed setting kafka.{field}" in message
    assert f"(env RTML_KAFKA__{field.upper()})" in message and f"(env RTML_KAFKA__{table.upper()})" in message


def test_typed_keys_include_the_ones_the_brief_names_and_librdkafka_aliases() -> None:
    named = {"bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username",
             "sasl.password", "ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
             "ssl.key.password", "session.timeout.ms", "heartbeat.interval.ms", "max.poll.interval.ms",
             "group.instance.id", "group.protocol", "metadata.broker.list"}  # fmt: skip
    assert named <= set(TYPED_LIBRDKAFKA)
    assert {"acks", "request.required.acks"} <= OWNED_LIBRDKAFKA  # librdkafka's name for acks


def test_a_typed_key_in_other_case_or_spacing_is_refused_too(tmp_path: Path) -> None:
    message = str(error_of(config(tmp_path, '[kafka.extra]\n" Security.Protocol" = "PLAINTEXT"')))
    assert "is the typed setting kafka.security_protocol" in message


NATIVE_CODE = ["plugin.library.paths", "ssl.engine.location", "ssl.providers", "sasl.kerberos.kinit.cmd"]


@pytest.mark.parametrize("key", NATIVE_CODE)
@pytest.mark.parametrize("table", ["extra", "consumer_extra", "producer_extra"])
def test_keys_that_load_native_code_or_run_commands_are_refused(tmp_path: Path, key: str, table: str) -> None:
    message = str(error_of(config(tmp_path, f'[kafka.{table}]\n"{key}" = "/tmp/evil.so"')))
    assert f"kafka.{table}: {key} " in message and "refused unless kafka.allow_native_code = true" in message
    assert "RTML_KAFKA__ALLOW_NATIVE_CODE" in message and f"(env RTML_KAFKA__{table.upper()})" in message


@pytest.mark.parametrize("key", NATIVE_CODE)
def test_native_code_passes_through_when_explicitly_allowed(tmp_path: Path, key: str) -> None:
    s = load_settings(config(tmp_path, f'[kafka.consumer_extra]\n"{key}" = "x"',
                             base=BASE.replace("[kafka]", "[kafka]\nallow_native_code = true")))  # fmt: skip
    assert s.consumer_config()[key] == "x" and key not in s.producer_config()


def test_allowing_native_code_keeps_the_other_refusals(tmp_path: Path) -> None:
    base = BASE.replace("[kafka]", "[kafka]\nallow_native_code = true")
    message = str(error_of(config(tmp_path, '[kafka.extra]\n"security.protocol" = "PLAINTEXT"', base=base)))
    assert "is the typed setting kafka.security_protocol" in message


def test_other_librdkafka_keys_pass_through_to_both_clients(tmp_path: Path) -> None:
    s = load_settings(config(tmp_path, '[kafka.extra]\n"socket.keepalive.enable" = "true"'))
    assert s.consumer_config()["socket.keepalive.enable"] == "true"
    assert s.producer_config()["socket.keepalive.enable"] == "true"


TYPED_PASSTHROUGH = """
[kafka.extra]
"socket.keepalive.enable" = true

[kafka.producer_extra]
"linger.ms" = 20
"batch.size" = 65536
"sticky.partitioning.linger.ms" = 0.5
"enable.metrics.push" = false

[kafka.consumer_extra]
"fetch.wait.max.ms" = 10
"""


def test_numbers_and_booleans_pass_through_as_librdkafka_reads_them(tmp_path: Path) -> None:
    s = load_settings(config(tmp_path, TYPED_PASSTHROUGH))
    producer, consumer = s.producer_config(), s.consumer_config()
    assert (producer["linger.ms"], producer["batch.size"]) == ("20", "65536")
    assert (producer["sticky.partitioning.linger.ms"], producer["enable.metrics.push"]) == ("0.5", "false")
    assert (producer["socket.keepalive.enable"], consumer["socket.keepalive.enable"]) == ("true", "true")
    assert consumer["fetch.wait.max.ms"] == "10"


def test_numbers_and_booleans_from_the_environment_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer_extra = {"linger.ms": 20, "enable.metrics.push": False}
    monkeypatch.setenv("RTML_KAFKA__PRODUCER_EXTRA", json.dumps(producer_extra))
    monkeypatch.setenv("RTML_KAFKA__EXTRA", json.dumps({"socket.keepalive.enable": True}))
    s = load_settings(config(tmp_path))
    producer = s.producer_config()
    assert (producer["linger.ms"], producer["enable.metrics.push"]) == ("20", "false")
    assert s.consumer_config()["socket.keepalive.enable"] == "true"


@pytest.mark.parametrize(
    ("key", "value"),
    [("enable.ssl.certificate.verification", "false"), ("enable.ssl.certificate.verification", "0")],
)
def test_tls_off_as_a_toml_boolean_or_number_is_refused(tmp_path: Path, key: str, value: str) -> None:
    message = str(error_of(config(tmp_path, f'[kafka.consumer_extra]\n"{key}" = {value}')))
    assert f"kafka.consumer_extra: {key} = '{value}' switches off TLS verification" in message


def test_a_passthrough_value_that_is_not_a_scalar_names_its_key_and_variable(tmp_path: Path) -> None:
    message = str(error_of(config(tmp_path, '[kafka.extra]\n"client.rack" = ["a", "b"]')))
    assert "kafka.extra.client.rack: Input should be a valid string (env RTML_KAFKA__EXTRA)" in message


def test_sasl_needs_a_mechanism(tmp_path: Path) -> None:
    base = BASE.replace('sasl_username = "svc"', 'sasl_username = "svc"\nsecurity_protocol = "SASL_SSL"')
    message = str(error_of(config(tmp_path, base=base)))
    assert "kafka.sasl_mechanism: required with security_protocol SASL_SSL" in message
    assert "(env RTML_KAFKA__SASL_MECHANISM)" in message


# --- secrets ---------------------------------------------------------------------------------------------


def sasl(tmp_path: Path, password_line: str) -> str:
    return BASE.replace(
        'sasl_username = "svc"',
        f'sasl_username = "svc"\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n{password_line}',
    )


def test_a_secret_from_a_file_reaches_librdkafka_and_nothing_else(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    s = load_settings(config(tmp_path, base=sasl(tmp_path, f'sasl_password_file = "{path}"')))
    assert s.consumer_config()["sasl.password"] == SECRET  # read at the boundary, newline stripped
    assert s.producer_config()["sasl.password"] == SECRET
    for text in (repr(s), str(s), repr(s.kafka), s.model_dump_json()):
        assert SECRET not in text


def test_a_secret_from_a_file_stays_out_of_the_error_text(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    base = sasl(tmp_path, f'sasl_password_file = "{path}"').replace("max_records = 500", "max_records = -1")
    error = error_of(config(tmp_path, base=base))
    assert "batch.max_records" in str(error)
    assert SECRET not in str(error) and SECRET not in repr(error)


def test_an_inline_secret_stays_out_of_repr_and_error_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_KAFKA__SASL_PASSWORD", SECRET)
    monkeypatch.setenv("RTML_SCHEMA_REGISTRY__BEARER_TOKEN", SECRET)
    s = load_settings(config(tmp_path, base=sasl(tmp_path, "")))
    assert SECRET not in repr(s)
    assert s.consumer_config()["sasl.password"] == SECRET and s.schema_registry.token() == SECRET
    monkeypatch.setenv("RTML_BATCH__MAX_RECORDS", "lots")
    error = error_of(config(tmp_path, base=sasl(tmp_path, "")))
    assert "RTML_BATCH__MAX_RECORDS" in str(error) and SECRET not in str(error)


def test_a_secret_under_a_misspelt_key_is_not_echoed(tmp_path: Path) -> None:
    error = error_of(config(tmp_path, base=sasl(tmp_path, f'sasl_pasword = "{SECRET}"')))
    assert "kafka.sasl_pasword" in str(error) and SECRET not in str(error)


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    error = error_of(config(tmp_path, f'[schema_registry]\nbasic_auth_user_info = ["user:{SECRET}"]'))
    assert "schema_registry.basic_auth_user_info" in str(error) and SECRET not in str(error)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("kafka", "sasl_password_file"),
        ("kafka", "ssl_key_password_file"),
        ("schema_registry", "basic_auth_user_info_file"),
        ("schema_registry", "bearer_token_file"),
    ],
)
def test_an_unreadable_secret_file_is_named_at_load(tmp_path: Path, table: str, key: str) -> None:
    missing = tmp_path / "no-such-secret"
    line = f'{key} = "{missing}"'
    base = BASE.replace("[kafka]", f"[kafka]\n{line}") if table == "kafka" else f"{BASE}\n[{table}]\n{line}"
    error = error_of(config(tmp_path, base=base))
    assert f"{table}.{key}: cannot read {missing}" in str(error)
    assert f"(env RTML_{table.upper()}__{key.upper()})" in str(error)


def test_registry_secrets_come_from_files(tmp_path: Path) -> None:
    user_info, token = tmp_path / "ui", tmp_path / "tok"
    user_info.write_text("user:pw\n")
    token.write_text(f"  {SECRET}  \n")
    secrets = f'basic_auth_user_info_file = "{user_info}"\nbearer_token_file = "{token}"'
    s = load_settings(config(tmp_path, f"[schema_registry]\n{secrets}"))
    assert (s.schema_registry.user_info(), s.schema_registry.token()) == ("user:pw", SECRET)
    assert SECRET not in repr(s)


def registry(tmp_path: Path, url: str, credential: str, *, allow: bool | None = None) -> str:
    """A [schema_registry] table with ``url`` and one credential, inline or from a file."""
    secret = tmp_path / "registry.secret"
    secret.write_text(SECRET)
    value = f'"{secret}"' if credential.endswith("_file") else f'"{SECRET}"'
    allowed = "" if allow is None else f"\nallow_plaintext_credentials = {str(allow).lower()}"
    return f'[schema_registry]\nurl = "{url}"\n{credential} = {value}{allowed}'


REGISTRY_CREDENTIALS = [
    "basic_auth_user_info",
    "basic_auth_user_info_file",
    "bearer_token",
    "bearer_token_file",
]


@pytest.mark.parametrize("credential", REGISTRY_CREDENTIALS)
@pytest.mark.parametrize("url", ["http://registry:8081/apis/ccompat/v7", "HTTP://registry"])
def test_registry_credentials_over_plain_http_are_refused(tmp_path: Path, credential: str, url: str) -> None:
    error = error_of(config(tmp_path, registry(tmp_path, url, credential)))
    message = str(error)
    assert f"schema_registry.url: http:// would send schema_registry.{credential} in clear" in message
    assert "schema_registry.allow_plaintext_credentials = true" in message
    assert "RTML_SCHEMA_REGISTRY__ALLOW_PLAINTEXT_CREDENTIALS" in message
    assert "(env RTML_SCHEMA_REGISTRY__URL)" in message
    assert SECRET not in message and SECRET not in repr(error)


@pytest.mark.parametrize("credential", REGISTRY_CREDENTIALS)
def test_registry_credentials_over_https_or_explicitly_allowed_http(tmp_path: Path, credential: str) -> None:
    https = load_settings(config(tmp_path, registry(tmp_path, "https://registry", credential)))
    assert SECRET in (https.schema_registry.user_info(), https.schema_registry.token())
    allowed = load_settings(config(tmp_path, registry(tmp_path, "http://registry", credential, allow=True)))
    assert allowed.schema_registry.allow_plaintext_credentials


def test_a_plain_http_registry_without_credentials_is_fine(tmp_path: Path) -> None:
    s = load_settings(config(tmp_path, '[schema_registry]\nurl = "http://127.0.0.1:8081/apis/ccompat/v7"'))
    assert s.schema_registry.user_info() is None and s.schema_registry.token() is None


def test_producer_tuning_defaults_give_way_to_producer_extra(tmp_path: Path) -> None:
    default = load_settings(config(tmp_path)).producer_config()
    assert (default["linger.ms"], default["compression.type"], default["acks"]) == (5, "lz4", "all")
    tuned = load_settings(config(tmp_path, '[kafka.producer_extra]\n"linger.ms" = "20"\n'
                                           '"compression.type" = "zstd"'))  # fmt: skip
    producer = tuned.producer_config()
    assert (producer["linger.ms"], producer["compression.type"]) == ("20", "zstd")
    assert (producer["enable.idempotence"], producer["acks"]) == (True, "all")


# --- the librdkafka dicts ----------------------------------------------------------------------------------


def with_kafka(tmp_path: Path, **values: Any) -> Settings:
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return load_settings(config(tmp_path, base=BASE.replace("[kafka]", f"[kafka]\n{lines}")))


def test_the_consumer_commits_only_what_the_worker_stores(tmp_path: Path) -> None:
    consumer = with_kafka(tmp_path).consumer_config()
    assert consumer["group.id"] == "scorers"
    assert consumer["bootstrap.servers"] == "file-broker:9092"
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.protocol" not in consumer
    assert "sasl.password" not in consumer  # absent settings are left out, not passed as "None"


def test_the_kip848_protocol_leaves_the_assignment_to_the_broker(tmp_path: Path) -> None:
    consumer = with_kafka(tmp_path, group_protocol="consumer").consumer_config()
    assert consumer["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in consumer
    assert consumer["enable.auto.commit"] is False


# --- group membership ------------------------------------------------------------------------------------


def test_group_defaults_fail_over_within_seconds(tmp_path: Path) -> None:
    s = with_kafka(tmp_path)
    consumer = s.consumer_config()
    assert (consumer["session.timeout.ms"], consumer["heartbeat.interval.ms"]) == (10_000, 1_000)
    assert consumer["max.poll.interval.ms"] == 300_000
    assert "group.instance.id" not in consumer
    assert s.kafka.startup_timeout_s == 30
    assert "session.timeout.ms" not in s.producer_config()


def test_group_settings_from_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_KAFKA__GROUP_INSTANCE_ID", "scorer-2")
    monkeypatch.setenv("RTML_KAFKA__SESSION_TIMEOUT_MS", "60000")
    s = with_kafka(tmp_path, heartbeat_interval_ms=3000, max_poll_interval_ms=120_000, startup_timeout_s=5)
    consumer = s.consumer_config()
    assert (consumer["session.timeout.ms"], consumer["heartbeat.interval.ms"]) == (60_000, 3_000)
    assert (consumer["max.poll.interval.ms"], consumer["group.instance.id"]) == (120_000, "scorer-2")
    assert s.kafka.startup_timeout_s == 5


@pytest.mark.parametrize(("session", "heartbeat"), [(10_000, 4_000), (3_000, 1_000), (1_000, 1_000)])
def test_a_heartbeat_not_below_a_third_of_the_session_is_refused(
    tmp_path: Path, session: int, heartbeat: int
) -> None:
    values = f"session_timeout_ms = {session}\nheartbeat_interval_ms = {heartbeat}"
    message = str(error_of(config(tmp_path, base=BASE.replace("[kafka]", f"[kafka]\n{values}"))))
    assert f"kafka.heartbeat_interval_ms: {heartbeat} must be below a third of" in message
    assert "(env RTML_KAFKA__HEARTBEAT_INTERVAL_MS)" in message


def test_a_max_poll_interval_below_the_session_timeout_is_refused(tmp_path: Path) -> None:
    values = "session_timeout_ms = 30000\nmax_poll_interval_ms = 20000"
    message = str(error_of(config(tmp_path, base=BASE.replace("[kafka]", f"[kafka]\n{values}"))))
    assert "kafka.max_poll_interval_ms: 20000 must be at least kafka.session_timeout_ms" in message
    assert "(env RTML_KAFKA__MAX_POLL_INTERVAL_MS)" in message


def test_the_kip848_protocol_leaves_session_and_heartbeat_to_the_broker(tmp_path: Path) -> None:
    consumer = with_kafka(tmp_path, group_protocol="consumer", group_instance_id="scorer-0").consumer_config()
    assert "session.timeout.ms" not in consumer and "heartbeat.interval.ms" not in consumer
    assert (consumer["max.poll.interval.ms"], consumer["group.instance.id"]) == (300_000, "scorer-0")


@pytest.mark.parametrize("field", ["session_timeout_ms", "heartbeat_interval_ms"])
def test_a_client_session_setting_with_the_kip848_protocol_is_refused(tmp_path: Path, field: str) -> None:
    message = str(error_of(config(tmp_path, base=BASE.replace(
        "[kafka]", f'[kafka]\ngroup_protocol = "consumer"\n{field} = 50000'))))  # fmt: skip
    assert f"kafka.{field}: a broker-side group setting with group_protocol" in message
    assert f"(env RTML_KAFKA__{field.upper()})" in message


def test_the_producer_is_idempotent_and_not_transactional_by_default(tmp_path: Path) -> None:
    producer = with_kafka(tmp_path).producer_config()
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert "transactional.id" not in producer and "transaction.timeout.ms" not in producer
    assert "group.id" not in producer


def test_exactly_once_gives_the_producer_its_transactional_id(tmp_path: Path) -> None:
    s = load_settings(
        config(tmp_path, base='delivery = "exactly-once"\ntransactional_id = "scorers-0"\n' + BASE)
    )
    producer = s.producer_config()
    assert (producer["transactional.id"], s.effective_transactional_id()) == ("scorers-0", "scorers-0")
    assert producer["transaction.timeout.ms"] == 15_000
    assert producer["enable.idempotence"] is True


@pytest.mark.parametrize("source", ["file", "environment"])
def test_exactly_once_without_a_transactional_id_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Two replicas on one host used to share "<group_id>-<hostname>": the second died with a bare _FENCED."""
    if source == "environment":
        monkeypatch.setenv("RTML_DELIVERY", "exactly-once")
    base = ('delivery = "exactly-once"\n' if source == "file" else "") + BASE
    message = str(error_of(config(tmp_path, base=base)))
    assert 'transactional_id: required with delivery "exactly-once"' in message
    assert "stable per replica and unique" in message and "StatefulSet" in message
    assert "(env RTML_TRANSACTIONAL_ID)" in message


def test_an_empty_transactional_id_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_DELIVERY", "exactly-once")
    monkeypatch.setenv("RTML_TRANSACTIONAL_ID", "")
    assert "(env RTML_TRANSACTIONAL_ID)" in str(error_of(config(tmp_path)))


def test_at_least_once_has_no_transactional_id_even_when_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTML_TRANSACTIONAL_ID", "scorers-0")  # e.g. a StatefulSet template used for both
    s = load_settings(config(tmp_path))
    assert "transactional.id" not in s.producer_config() and s.effective_transactional_id() == ""


def test_an_explicit_transactional_id_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTML_DELIVERY", "exactly-once")
    monkeypatch.setenv("RTML_TRANSACTIONAL_ID", "scorer-pod-3")
    monkeypatch.setenv("RTML_TRANSACTION_TIMEOUT_MS", "60000")
    producer = load_settings(config(tmp_path)).producer_config()
    assert (producer["transactional.id"], producer["transaction.timeout.ms"]) == ("scorer-pod-3", 60_000)


def test_tls_paths_and_secrets_map_to_librdkafka_names(tmp_path: Path) -> None:
    key_password = tmp_path / "key.pw"
    key_password.write_text("kpw\n")
    s = with_kafka(
        tmp_path,
        security_protocol="SSL",
        ssl_ca_location="/etc/ca.pem",
        ssl_certificate_location="/etc/c.pem",
        ssl_key_location="/etc/k.pem",
        ssl_key_password_file=str(key_password),
    )
    config_ = s.consumer_config()
    assert config_["security.protocol"] == "SSL"
    assert (config_["ssl.ca.location"], config_["ssl.key.password"]) == ("/etc/ca.pem", "kpw")
    assert (config_["ssl.certificate.location"], config_["ssl.key.location"]) == ("/etc/c.pem", "/etc/k.pem")
