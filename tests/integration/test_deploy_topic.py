"""The deployment topic on the real broker: its shape, a table read back to its end, tombstones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType  # type: ignore[attr-defined]

from worker.deploy.records import (
    ActiveRecord,
    ModelRef,
    VersionRecord,
    active_key,
    new_version_id,
    version_key,
)
from worker.deploy.topic import ensure_topic, read_table, write
from worker.errors import ConfigError


def version(name: str, message: str) -> VersionRecord:
    return VersionRecord(deployment=name, version_id=new_version_id(), graph={"nodes": []},
                         graph_digest="0" * 64, reader_schema="string", output_schema="string",
                         models=(ModelRef(model_id="sha256:" + "1" * 64, size=1),),
                         created_at="2026-12-04T19:00:00+00:00", message=message)  # fmt: skip


def test_the_topic_is_made_compacted_with_one_partition(
    admin: AdminClient, bootstrap_servers: str, control_topic: str
) -> None:
    config = {"bootstrap.servers": bootstrap_servers}
    ensure_topic(config, control_topic)
    ensure_topic(config, control_topic)  # a second call finds it as it should be
    assert len(admin.list_topics(timeout=10).topics[control_topic].partitions) == 1
    resource = ConfigResource(ResourceType.TOPIC, control_topic)
    described = admin.describe_configs([resource])[resource].result(timeout=10)
    assert described["cleanup.policy"].value == "compact"
    assert described["min.insync.replicas"].value == "1"  # min(2, replication factor 1) on one broker


def test_a_topic_of_another_shape_is_refused_naming_the_setting(
    bootstrap_servers: str, new_topic: Callable[..., str]
) -> None:
    for topic in (new_topic(2, config={"cleanup.policy": "compact"}), new_topic(1)):
        with pytest.raises(ConfigError, match=r"needs 1 partition and cleanup\.policy=compact") as caught:
            ensure_topic({"bootstrap.servers": bootstrap_servers}, topic)
        assert caught.value.field == "deployments.topic"


def test_written_records_read_back_as_a_table_to_the_end(bootstrap_servers: str, control_topic: str) -> None:
    config = {"bootstrap.servers": bootstrap_servers}
    ensure_topic(config, control_topic)
    table, end = read_table(config, control_topic)
    assert (table.deployments, end) == ({}, 0)
    v1, v2 = version("cars", "one"), version("cars", "two")
    pointer = ActiveRecord(
        deployment="cars", version_id=v2.version_id, updated_at="2026-12-04T19:00:02+00:00"
    )
    offsets = write(config, control_topic, [v1, v2, pointer])
    assert offsets == [0, 1, 2]
    table, end = read_table(config, control_topic)
    cars = table.get("cars")
    assert end == 3 and cars is not None and cars.active_version() == v2
    assert [v.message for v in cars.ordered()] == ["one", "two"]
    tombstones = [(active_key("cars"), None), *((version_key("cars", v.version_id), None) for v in (v1, v2))]
    write(config, control_topic, tombstones)
    table, end = read_table(config, control_topic)
    assert end == 6 and table.get("cars") is None


def test_a_record_written_around_the_cli_is_refused_not_raised(
    bootstrap_servers: str, control_topic: str
) -> None:
    from confluent_kafka import Producer

    config = {"bootstrap.servers": bootstrap_servers}
    ensure_topic(config, control_topic)
    producer = Producer(config)
    producer.produce(control_topic, key=b"cars/active", value=b"{malformed")
    producer.flush(10)
    table, _ = read_table(config, control_topic)
    assert [r.reason[:20] for r in table.refused] == ["the value is not JSO"]
