"""Replica status: what each replica of a deployment runs, in a compacted topic keyed by replica id.

Each replica following a deployment writes a ``ReplicaStatus`` when it starts, when a version takes over,
when it refuses one, and every ``HEARTBEAT_S`` (``deployments.status_topic``, default
``_rtml_deployment_status``, shaped like the deployment topic). Which replicas are alive is the consumer
group's business, not the status topic's: ``live`` joins the group's members (AdminClient
``describe_consumer_groups``) with their status records by member id, so a replica that died and left an
old record behind is not counted, and one that runs but has not written yet is named as such.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from pydantic import BaseModel, ConfigDict, ValidationError

from worker.deploy.topic import ensure_topic, read_log
from worker.errors import ConfigError
from worker.runtime.config import Settings

log = logging.getLogger("worker.deploy")

FIELD = "deployments.status_topic"
HEARTBEAT_S = 10.0


class ReplicaStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    replica: str
    member_id: str = ""  # the consumer group member id, to join with the group's live members
    group_id: str
    deployment: str
    version_id: str | None = None
    version: int | None = None  # the version's number in the deployment
    graph_digest: str | None = None
    since: str | None = None  # when that version took over on this replica
    state: Literal["scoring", "paused"] = "scoring"  # paused: the deployment was deleted
    refused: dict[str, str] = {}  # version id -> why this replica refused it
    # "<topic>:<partition>" -> the first offset this replica scored with the version (its switch-over)
    switched: dict[str, int] = {}
    heartbeat_at: str


def replica_id(settings: Settings) -> str:
    """``kafka.group_instance_id`` when set (static membership: stable across restarts), else host-pid."""
    return settings.kafka.group_instance_id or f"{socket.gethostname()}-{os.getpid()}"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


class StatusWriter:
    """Writes this replica's status records; a failure to write is logged, never raised into the replica."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.deployments.status_topic
        config = settings.kafka.client_config("producer")
        try:
            ensure_topic(config, self.topic, field=FIELD)
        except ConfigError as exc:  # e.g. no permission to create it: the replica scores on, unseen
            log.warning("cannot make the status topic; status goes unreported", extra={"error": str(exc)})
        self._producer = Producer({**config, "enable.idempotence": True, "acks": "all", "linger.ms": 0})

    def write(self, status: ReplicaStatus) -> None:
        def on_delivery(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                log.warning("status record not written", extra={"error": error.str()})

        key, value = status.replica.encode(), status.model_dump_json().encode()
        try:
            self._producer.produce(self.topic, key=key, value=value, partition=0, on_delivery=on_delivery)
        except (BufferError, KafkaException) as exc:
            log.warning("status record not queued", extra={"error": str(exc)})
        self._producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        self._producer.flush(timeout_s)


def read_statuses(config: Mapping[str, Any], topic: str) -> dict[str, ReplicaStatus]:
    """The latest status of every replica that ever wrote one (unreadable records are skipped)."""
    statuses: dict[str, ReplicaStatus] = {}

    def take(key: bytes | None, value: bytes | None, _offset: int) -> None:
        if key is None:
            return
        if value is None:
            statuses.pop(key.decode(errors="replace"), None)
            return
        try:
            status = ReplicaStatus.model_validate(json.loads(value))
        except (ValueError, ValidationError):
            return
        statuses[status.replica] = status

    read_log(config, topic, take, field=FIELD)
    return statuses


@dataclass(frozen=True)
class Live:
    """A live member of the group and what its status says (None: it has written none yet)."""

    member_id: str
    client_id: str
    host: str
    status: ReplicaStatus | None
    lag: int | None = None  # records of its assigned partitions past the group's committed offsets


def live(
    config: Mapping[str, Any],
    group_id: str,
    topic: str,
    *,
    admin: Callable[[Mapping[str, Any]], Any] = lambda c: AdminClient(dict(c)),
    timeout_s: float = 10.0,
    with_lag: bool = False,
) -> list[Live]:
    """The group's live members joined with their status records by member id (and each one's lag)."""
    client = admin(config)  # held until the answer is in: a collected client never completes its futures
    described = client.describe_consumer_groups([group_id], request_timeout=timeout_s)[group_id]
    try:
        members = described.result(timeout=timeout_s).members
    except Exception as exc:  # confluent-kafka raises KafkaException with the broker's error
        raise ConfigError(f"cannot describe group {group_id}: {exc}", field="group_id") from exc
    by_member = {s.member_id: s for s in read_statuses(config, topic).values() if s.member_id}
    lags = _lags(client, group_id, members, timeout_s) if with_lag else {}
    found = [Live(m.member_id, m.client_id, m.host, by_member.get(m.member_id), lags.get(m.member_id))
             for m in members]  # fmt: skip
    return sorted(found, key=lambda member: member.member_id)


def _lags(client: Any, group_id: str, members: list[Any], timeout_s: float) -> dict[str, int]:
    """Per member id, the records of its assigned partitions past what the group committed."""
    owned = {m.member_id: [(tp.topic, tp.partition) for tp in m.assignment.topic_partitions] for m in members}
    partitions = [TopicPartition(t, p) for tps in owned.values() for t, p in tps]
    if not partitions:
        return dict.fromkeys(owned, 0)
    request = [ConsumerGroupTopicPartitions(group_id, partitions)]
    listed = client.list_consumer_group_offsets(request, request_timeout=timeout_s)[group_id]
    committed = {
        (tp.topic, tp.partition): max(tp.offset, 0)
        for tp in listed.result(timeout=timeout_s).topic_partitions
    }
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    ends = client.list_offsets(dict.fromkeys(partitions, latest), request_timeout=timeout_s)
    end = {(tp.topic, tp.partition): future.result(timeout=timeout_s).offset for tp, future in ends.items()}
    return {
        member: sum(max(end[tp] - committed.get(tp, 0), 0) for tp in tps) for member, tps in owned.items()
    }


def wait_running(
    config: Mapping[str, Any],
    group_id: str,
    topic: str,
    version_id: str,
    *,
    label: str,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Live]:
    """Until every live member of ``group_id`` runs ``version_id`` (named ``label`` in messages); raises
    ``ConfigError`` naming the replica that refused it and why, or, past ``timeout_s``, the ones not there."""
    deadline = time.monotonic() + timeout_s
    while True:
        members = live(config, group_id, topic)
        for member in members:
            if member.status is not None and version_id in member.status.refused:
                reason = member.status.refused[version_id]
                who = f"replica {member.status.replica} ({member.host})"
                raise ConfigError(f"{who} refused {label}: {reason}", field="--wait")
        waiting = [m for m in members if m.status is None or m.status.version_id != version_id]
        if members and not waiting:
            return members
        if time.monotonic() > deadline:
            if not members:
                raise ConfigError(
                    f"no replica of group {group_id} is live after {timeout_s:.0f} s", field="--wait"
                )
            names = ", ".join(
                m.status.replica if m.status else f"{m.client_id}@{m.host} (no status)" for m in waiting
            )
            count = f"{len(waiting)} of {len(members)} replicas"
            raise ConfigError(
                f"after {timeout_s:.0f} s, {count} do not run {label} yet: {names}", field="--timeout"
            )
        sleep(0.5)
