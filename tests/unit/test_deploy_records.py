"""The deployment topic's records: parsing never raises, versions are immutable, the table follows offsets."""

from __future__ import annotations

import json

import pytest

from worker.deploy.records import (
    ActiveRecord,
    ModelRef,
    Refused,
    Table,
    Tombstone,
    VersionRecord,
    active_key,
    check_name,
    encode,
    new_version_id,
    parse,
    version_key,
)

MODEL = ModelRef(model_id="sha256:" + "ab" * 32, size=10, name="lr")


def version(name: str = "cars", *, message: str = "", parent: str | None = None) -> VersionRecord:
    return VersionRecord(
        deployment=name,
        version_id=new_version_id(),
        graph={"inputs": [], "nodes": [], "outputs": []},
        graph_digest="cd" * 32,
        reader_schema={"type": "record", "name": "In", "fields": []},
        output_schema={"type": "record", "name": "Out", "fields": []},
        models=(MODEL,),
        created_at="2026-12-04T19:00:00+00:00",
        message=message,
        parent=parent,
    )


def active(v: VersionRecord) -> ActiveRecord:
    return ActiveRecord(
        deployment=v.deployment, version_id=v.version_id, updated_at="2026-12-04T19:00:01+00:00"
    )


def test_a_record_round_trips_through_its_key_and_value() -> None:
    v = version(message="first")
    key, value = encode(v)
    assert key == version_key("cars", v.version_id).encode()
    assert parse(key, value, 0) == v
    key, value = encode(active(v))
    assert key == active_key("cars").encode() and parse(key, value, 1) == active(v)
    assert MODEL.sha256 == "ab" * 32


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"cars/active", b"{not json", "not JSON"),
        (b"cars/active", b"[1, 2]", "not a JSON object"),
        (b"cars/active", json.dumps({"format": 2, "kind": "active"}).encode(), "this worker reads format 1"),
        (b"cars/active", json.dumps({"format": 1, "kind": "version"}).encode(), "under a key of kind"),
        (
            b"cars/active",
            json.dumps({"format": 1, "kind": "active", "deployment": "cars"}).encode(),
            "version_id",
        ),
        (b"cars/elsewhere", b"{}", "neither <name>/active"),
        (b"Cars/active", b"{}", "not a deployment name"),
        (b"\xff/active", b"{}", "not UTF-8"),
        (b"cars/active", b"[" * 100_000, "not JSON"),  # deeply nested: RecursionError is a refusal too
    ],
)
def test_what_cannot_be_read_is_refused_with_its_reason(key: bytes, value: bytes, reason: str) -> None:
    parsed = parse(key, value, 7)
    assert isinstance(parsed, Refused) and parsed.offset == 7
    assert reason in parsed.reason


def test_a_record_under_another_deployments_key_is_refused() -> None:
    v = version("cars")
    _, value = encode(v)
    parsed = parse(version_key("bikes", v.version_id).encode(), value, 3)
    assert isinstance(parsed, Refused) and "another deployment or version" in parsed.reason


def test_a_null_value_is_a_tombstone_of_its_key() -> None:
    vid = new_version_id()
    assert parse(version_key("cars", vid).encode(), None, 0) == Tombstone("cars", vid)
    assert parse(b"cars/active", None, 0) == Tombstone("cars", None)


def test_versions_are_numbered_by_offset_and_the_pointer_names_the_active_one() -> None:
    table = Table()
    v1, v2 = version(message="one"), version(message="two")
    for offset, record in enumerate([v1, active(v1), v2, active(v2)]):
        table.apply(*encode(record), offset)
    cars = table.get("cars")
    assert cars is not None
    assert [v.message for v in cars.ordered()] == ["one", "two"]
    assert (cars.number(v1.version_id), cars.number(v2.version_id)) == (1, 2)
    assert cars.active_version() == v2 and cars.by_number(1) == v1
    with pytest.raises(KeyError, match="has no version 3"):
        cars.by_number(3)


def test_a_version_is_immutable_the_first_record_stands() -> None:
    table = Table()
    v = version(message="original")
    table.apply(*encode(v), 0)
    forged = v.model_copy(update={"message": "forged"})
    parsed = table.apply(*encode(forged), 1)
    assert isinstance(parsed, Refused) and "immutable" in parsed.reason
    cars = table.get("cars")
    assert cars is not None and cars.ordered() == [v]
    assert table.apply(*encode(v), 2) == v  # the same record again (a producer retry) is no refusal
    assert len(table.refused) == 1


def test_tombstones_delete_the_deployment_and_a_new_publish_starts_again() -> None:
    table = Table()
    v = version()
    table.apply(*encode(v), 0)
    table.apply(*encode(active(v)), 1)
    table.apply(version_key("cars", v.version_id).encode(), None, 2)
    table.apply(active_key("cars").encode(), None, 3)
    assert table.get("cars") is None
    again = version(message="again")
    table.apply(*encode(again), 4)
    cars = table.get("cars")
    assert cars is not None and cars.number(again.version_id) == 1 and cars.active_version() is None


def test_a_pointer_to_a_version_not_seen_names_no_active_version() -> None:
    table = Table()
    table.apply(*encode(active(version())), 0)
    cars = table.get("cars")
    assert cars is not None and cars.active is not None and cars.active_version() is None


@pytest.mark.parametrize("name", ["cars", "car-insurance.v2", "a", "x" * 63])
def test_deployment_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "Cars", "-cars", "a/b", "x" * 64, "ca rs"])
def test_bad_deployment_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="deployment name"):
        check_name(name)
