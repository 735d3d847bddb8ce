"""``InMemoryConsumer``: the ``ConsumerClient`` calls over an ``InMemoryBroker``.

As with librdkafka, rebalance callbacks and commit results run inside ``consume``, ``poll`` and ``close``, on
the caller's thread, after the messages the call returns were fetched; assignments are incremental
(cooperative). Positions start at the group's committed
offset, else at ``auto.offset.reset`` (earliest or latest). ``read_committed`` is the only isolation level.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.runtime.clients import OnPartitions
from worker.runtime.inmemory.broker import TP, InMemoryBroker, Member

OFFSET_INVALID = -1001
_NO_CALLBACK: OnPartitions = lambda _consumer, _partitions: None  # noqa: E731


@dataclass(frozen=True)
class GroupMetadata:
    """What ``consumer_group_metadata`` hands to ``send_offsets_to_transaction``: ``member`` None and
    generation -1 outside the group, as librdkafka's (serialised the same way by ``bytes()``)."""

    group_id: str
    member: Member | None
    generation: int

    @property
    def member_id(self) -> str:
        return "" if self.member is None else f"member-{id(self.member):x}"

    def __bytes__(self) -> bytes:
        """librdkafka's form: "CGMDv2:", the generation (native int32), group id and member id (each
        NUL-terminated), then a byte that says the group instance id is null."""
        return b"".join((b"CGMDv2:", struct.pack("=i", self.generation), self.group_id.encode(), b"\0",
                         self.member_id.encode(), b"\0\x01"))  # fmt: skip


class InMemoryConsumer:
    """One group member; see the module docstring. Not thread-safe, like a librdkafka handle's poll."""

    def __init__(self, broker: InMemoryBroker, config: Mapping[str, Any]) -> None:
        self.broker = broker
        self.group_id = str(config["group.id"])
        self.earliest = config.get("auto.offset.reset", "latest") in ("earliest", "smallest", "beginning")
        self.auto_commit = bool(config.get("enable.auto.commit", True)) and bool(
            config.get("enable.auto.offset.store", True)
        )
        self.on_commit = config.get("on_commit")
        self.member: Member | None = None
        self.positions: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.commit_results: list[tuple[KafkaError | None, list[TopicPartition]]] = []
        self._callbacks: dict[str, OnPartitions] = {}
        self.closed = False

    def subscribe(
        self,
        topics: list[str],
        on_assign: OnPartitions = _NO_CALLBACK,
        on_revoke: OnPartitions = _NO_CALLBACK,
        on_lost: OnPartitions = _NO_CALLBACK,
    ) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.member = Member(self, list(topics))
        self.broker.join(self.group_id, self.member)

    # --- fetching ---------------------------------------------------------------------------------------

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self._rejoin()
        # Fetched before the callbacks run, as messages already queued in librdkafka come out of the same
        # call that serves a rebalance: a revoked partition's messages can follow its on_revoke.
        messages = self._fetch(num_messages)
        if not messages and timeout != 0 and not self._due():
            with self.broker.changed:
                self.broker.changed.wait(None if timeout < 0 else timeout)
            messages = self._fetch(num_messages)
        self._serve()
        return messages

    def _rejoin(self) -> None:
        """Learn the group's generation, as librdkafka's rejoin does in the background while it is polled."""
        with self.broker.lock:
            if self.member is not None:
                self.member.generation = self.broker.group(self.group_id).generation

    def _due(self) -> bool:
        """Callbacks or commit results are waiting to be served."""
        return bool(self.commit_results) or (self.member is not None and bool(self.member.callbacks))

    def poll(self, timeout: float = -1) -> Message | None:
        messages = self.consume(1, timeout)
        return messages[0] if messages else None

    def _fetch(self, limit: int) -> list[Message]:
        out: list[Message] = []
        with self.broker.lock:
            member = self.member
            for tp in sorted(member.owned - self.paused) if member is not None and member.alive else ():
                if tp[0] not in self.broker.logs:
                    continue
                out.extend(itertools.islice(self._read(tp), limit - len(out)))
                if len(out) >= limit:
                    break
            if out and self.auto_commit:
                group = self.broker.group(self.group_id)
                group.committed.update({tp: o for tp, o in self.positions.items() if tp in member.owned})  # type: ignore[union-attr]
        return out

    def _read(self, tp: TP) -> Any:
        """Messages of one partition from its position up to the last stable offset, advancing it."""
        topic, partition = tp
        log = self.broker.logs[topic][partition]
        end = self.broker.stable_end(topic, partition)
        while self.positions.get(tp, end) < end:
            offset = self.positions[tp]
            self.positions[tp] = offset + 1
            record = log[offset]
            if record.visible:
                headers: Any = record.headers  # the stubs want Optional header values
                yield Message(
                    topic=topic, partition=partition, offset=offset, key=record.key, value=record.value,
                    headers=headers, error=None, timestamp=(1, record.timestamp_ms),
                )  # fmt: skip

    # --- callbacks --------------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Run pending rebalance callbacks and commit results, outside the broker's lock."""
        member = self.member
        while member is not None and member.callbacks:
            with self.broker.lock:
                kind, parts = member.callbacks.pop(0)
                if not parts:
                    continue
                if kind == "assign":
                    self._start(parts)
                elif kind == "lost":
                    self.positions = {tp: o for tp, o in self.positions.items() if tp not in parts}
            self._callbacks.get(kind, _NO_CALLBACK)(self, [TopicPartition(t, p) for t, p in parts])
            if kind == "revoke":
                self._forget(parts)
                self.broker.released(self.group_id, member, parts)
            elif kind == "lost":  # librdkafka rejoins the group by itself with a new member id
                self.paused.clear()
                member = self.member = Member(self, member.topics)
                self.broker.join(self.group_id, member)
        results, self.commit_results = self.commit_results, []
        for error, partitions in results:
            if self.on_commit is not None:
                self.on_commit(error, partitions)

    def _start(self, parts: list[TP]) -> None:
        member = self.member
        assert member is not None
        committed = self.broker.group(self.group_id).committed
        for tp in parts:
            member.owned.add(tp)
            reset = 0 if self.earliest else self.broker.high(*tp)
            self.positions[tp] = committed.get(tp, reset)

    def _forget(self, parts: list[TP]) -> None:
        for tp in parts:
            self.positions.pop(tp, None)
            self.paused.discard(tp)

    # --- positions and commits --------------------------------------------------------------------------

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def seek(self, partition: TopicPartition) -> None:
        tp = (partition.topic, partition.partition)
        with self.broker.lock:
            self.positions[tp] = 0 if partition.offset < 0 else partition.offset

    def assignment(self) -> list[TopicPartition]:
        owned = self.member.owned if self.member is not None else set()
        return [TopicPartition(t, p) for t, p in sorted(owned)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_INVALID)
            )
            for tp in partitions
        ]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        with self.broker.lock:
            committed = self.broker.group(self.group_id).committed
            return [
                TopicPartition(
                    tp.topic, tp.partition, committed.get((tp.topic, tp.partition), OFFSET_INVALID)
                )
                for tp in partitions
            ]

    def commit(
        self, message: Message | None = None, *, offsets: list[TopicPartition], asynchronous: bool = True
    ) -> list[TopicPartition] | None:
        """Commit ``offsets`` for the group; fails with UNKNOWN_MEMBER_ID once the member left or expired,
        with ILLEGAL_GENERATION when the group moved on since the member's last consume/poll."""
        with self.broker.changed:
            member = self.member
            group = self.broker.group(self.group_id)
            if member is None or not member.alive or member not in group.members:
                error: KafkaError | None = KafkaError(KafkaError.UNKNOWN_MEMBER_ID)
            elif member.generation != group.generation:
                error = KafkaError(KafkaError.ILLEGAL_GENERATION)
            else:
                error = None
                committed = self.broker.group(self.group_id).committed
                committed.update({(tp.topic, tp.partition): tp.offset for tp in offsets})
                self.broker.changed.notify_all()
        result = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]
        if asynchronous:
            self.commit_results.append((error, result))
            return None
        if error is not None:
            raise KafkaException(error)
        return result

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        with self.broker.lock:
            return 0, self.broker.high(partition.topic, partition.partition)

    def consumer_group_metadata(self) -> GroupMetadata:
        """Outside the group (never joined, or expired and not yet told at a poll, by when librdkafka has
        reset its member id and generation on the coordinator's errors): no member, generation -1."""
        group = self.broker.group(self.group_id)
        if self.member is None or self.member not in group.members:
            return GroupMetadata(self.group_id, None, -1)
        return GroupMetadata(self.group_id, self.member, group.generation)

    def memberid(self) -> str | None:
        """The member id while in the group (librdkafka's: None before the first join)."""
        return self.consumer_group_metadata().member_id or None

    def close(self) -> None:
        """Run pending callbacks, revoke what is owned (its callback runs here), leave the group."""
        if self.closed:
            return
        self._serve()
        member = self.member
        if member is not None and member.alive:
            owned = sorted(member.owned)
            if owned:
                self._callbacks.get("revoke", _NO_CALLBACK)(self, [TopicPartition(t, p) for t, p in owned])
            self.broker.leave(self.group_id, member, lost=False)
        self.closed = True
