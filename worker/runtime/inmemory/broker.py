"""The state of the in-memory broker: topics, transactions, consumer groups, and the faults a test injects.

One ``InMemoryBroker`` is shared by every client made from it (``broker.clients()``). All state sits behind
one re-entrant lock; client calls take it briefly and run user callbacks (delivery reports, rebalances, commit
results) after releasing it, as librdkafka runs them from ``poll``. ``changed`` is notified on every write, so
a blocking ``consume``/``flush`` wakes up without sleeping.

What it models, after Kafka: per-partition logs with offsets; ``read_committed`` visibility (records of an
open transaction hide everything after them, aborted ones are skipped); producer fencing by transactional id;
a group's committed offsets; a group's partitions spread round-robin over its members, moved incrementally
(cooperative: the old owner is revoked at its next poll before the new owner is assigned), each move a new
generation, which a member learns at its next consume/poll (a commit sent before is refused with
ILLEGAL_GENERATION, as Kafka refuses one sent across a cooperative rebalance's second join); members that
leave, or whose session a test expires (their partitions are lost). What it does not model: replication,
leaders, networking, compression, time-based retention.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from confluent_kafka import KafkaError

if TYPE_CHECKING:
    from worker.runtime.inmemory.consumer import InMemoryConsumer
    from worker.runtime.inmemory.producer import InMemoryProducer

TP = tuple[str, int]
Headers = list[tuple[str, bytes]]
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588  # the broker's max.message.bytes default
# A delivery "fault" that is a success report with no offset, the message never written: librdkafka's
# implicit ack of a batch a partition with no producer state refused (``worker.runtime.tracker``).
UNWRITTEN_ACK = KafkaError(KafkaError.NO_ERROR, "implicitly acknowledged, never written")


@dataclass
class Transaction:
    state: Literal["open", "committed", "aborted"] = "open"
    offsets: dict[str, dict[TP, int]] = field(default_factory=dict)  # group -> points, applied on commit


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int
    txn: Transaction | None = None

    @property
    def visible(self) -> bool:
        return self.txn is None or self.txn.state == "committed"


@dataclass
class DeliveryFault:
    """The next ``count`` deliveries to ``topic`` (of one partition or key, or any) fail with ``error``."""

    topic: str
    error: KafkaError
    count: int
    partition: int | None = None
    key: bytes | None = None

    def matches(self, topic: str, partition: int, key: bytes | None) -> bool:
        return (
            self.count > 0
            and topic == self.topic
            and self.partition in (None, partition)
            and self.key in (None, key)
        )


@dataclass(eq=False)
class Member:
    """One consumer's membership: what it owns and the rebalance callbacks it has yet to run."""

    consumer: InMemoryConsumer
    topics: list[str]
    owned: set[TP] = field(default_factory=set)
    callbacks: list[tuple[Literal["assign", "revoke", "lost"], list[TP]]] = field(default_factory=list)
    alive: bool = True
    generation: int = 0  # the group's generation as this member last saw it (at its last consume/poll)


@dataclass
class Group:
    committed: dict[TP, int] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)
    owner: dict[TP, Member] = field(default_factory=dict)  # owner, or the member it is being handed to
    generation: int = 0


class InMemoryBroker:
    """Topics, groups and transactions for in-memory clients; see the module docstring."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.logs: dict[str, list[list[Record]]] = {}
        self.max_message_bytes: dict[str, int] = {}
        self.groups: dict[str, Group] = {}
        self.epochs: dict[str, int] = {}  # transactional id -> the epoch of its newest producer
        self.delivery_faults: list[DeliveryFault] = []
        self.commit_faults: list[KafkaError] = []  # raised by the next commit_transaction calls
        self.abort_faults: list[KafkaError] = []  # raised by the next abort_transaction calls
        self.held: set[str] = set()  # topics whose deliveries are held in flight (a dead leader)
        # abort_transaction calls made while the producer still held outputs: librdkafka can abort the process
        # then (an AddPartitionsToTxn answer after the abort completed: "txn_req_cnt > 0" asserted)
        self.aborts_holding_outputs = 0
        self.offsets_open = threading.Event()  # cleared: send_offsets_to_transaction blocks (stall_offsets)
        self.offsets_open.set()
        self.producers: list[InMemoryProducer] = []
        self.clock_ms = 1_700_000_000_000

    def clients(self) -> InMemoryClients:
        from worker.runtime.inmemory.clients import InMemoryClients

        return InMemoryClients(self)

    # --- topics -----------------------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        with self.changed:
            self.logs[name] = [[] for _ in range(partitions)]
            self.max_message_bytes[name] = max_message_bytes
            self.changed.notify_all()

    def delete_topic(self, name: str) -> None:
        with self.changed:
            self.logs.pop(name, None)
            self.max_message_bytes.pop(name, None)
            self.changed.notify_all()

    def append(self, topic: str, partition: int, record: Record) -> int:
        """Write ``record`` (the caller checked the topic exists); its offset."""
        with self.changed:
            log = self.logs[topic][partition]
            log.append(record)
            self.changed.notify_all()
            return len(log) - 1

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> tuple[int, int]:
        """Write one committed record directly, as an outside producer would: (partition, offset)."""
        with self.lock:
            part = self.partition_for(topic, key) if partition is None else partition
            return part, self.append(topic, part, Record(key, value, headers, self.tick()))

    def partition_for(self, topic: str, key: bytes | None) -> int:
        """The partition of a keyless (-1) send: a stable hash of the key, partition 0 without one."""
        return zlib.crc32(key or b"") % len(self.logs[topic])

    def tick(self) -> int:
        self.clock_ms += 1
        return self.clock_ms

    def visible(self, topic: str) -> list[tuple[int, int, Record]]:
        """(partition, offset, record) of every record a read_committed reader sees, by partition, offset."""
        with self.lock:
            return [
                (p, o, r)
                for p, log in enumerate(self.logs.get(topic, []))
                for o, r in enumerate(log[: self.stable_end(topic, p)])
                if r.visible
            ]

    def stable_end(self, topic: str, partition: int) -> int:
        """The last stable offset: read_committed readers stop at the first record of an open transaction."""
        log = self.logs[topic][partition]
        return next((o for o, r in enumerate(log) if r.txn is not None and r.txn.state == "open"), len(log))

    def high(self, topic: str, partition: int) -> int:
        return len(self.logs[topic][partition])

    def partitions_of(self, topics: Iterable[str]) -> list[TP]:
        return sorted((t, p) for t in topics if t in self.logs for p in range(len(self.logs[t])))

    # --- groups -----------------------------------------------------------------------------------------

    def group(self, group_id: str) -> Group:
        return self.groups.setdefault(group_id, Group())

    def committed(self, group_id: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition of ``topic`` (absent when never committed)."""
        with self.lock:
            return {p: o for (t, p), o in self.group(group_id).committed.items() if t == topic}

    def join(self, group_id: str, member: Member) -> None:
        with self.changed:
            group = self.group(group_id)
            group.members.append(member)
            self.rebalance(group_id)
            member.generation = group.generation

    def leave(self, group_id: str, member: Member, *, lost: bool) -> None:
        """``member`` left (closed) or its session expired (``lost``): its partitions move on."""
        with self.changed:
            group = self.group(group_id)
            if member not in group.members:
                return
            group.members.remove(member)
            member.alive = not lost
            if lost and member.owned:
                member.callbacks.append(("lost", sorted(member.owned)))
            for tp in list(member.owned):
                group.owner.pop(tp, None)
            member.owned.clear()
            self.rebalance(group_id)

    def expire(self, consumer: InMemoryConsumer) -> None:
        """Test control: the consumer's session timed out; it learns of it (``on_lost``) at its next poll."""
        if consumer.member is not None:
            self.leave(consumer.group_id, consumer.member, lost=True)

    def rebalance(self, group_id: str) -> None:
        """Spread the subscribed partitions round-robin over the members, moving as few as needed."""
        group = self.group(group_id)
        group.generation += 1
        live = [m for m in group.members if m.alive]
        if not live:
            return
        wanted = self.partitions_of({t for m in live for t in m.topics})
        for i, tp in enumerate(wanted):
            target = live[i % len(live)]
            owner = group.owner.get(tp)
            if owner is target:
                continue
            if owner is not None and tp not in owner.owned:  # an assignment the owner has not run yet
                for kind, parts in owner.callbacks:
                    if kind == "assign" and tp in parts:
                        parts.remove(tp)
                owner = None
            if owner is None:
                group.owner[tp] = target
                target.callbacks.append(("assign", [tp]))
            elif not any(tp in parts for kind, parts in owner.callbacks if kind == "revoke"):
                owner.callbacks.append(("revoke", [tp]))  # handed to the target once the owner let it go

    def released(self, group_id: str, member: Member, partitions: list[TP]) -> None:
        """``member`` ran its revoke callback for ``partitions``: give them to their new owners."""
        with self.changed:
            group = self.group(group_id)
            for tp in partitions:
                member.owned.discard(tp)
                if group.owner.get(tp) is member:
                    del group.owner[tp]
            self.rebalance(group_id)

    # --- transactions -----------------------------------------------------------------------------------

    def register_transactional_id(self, transactional_id: str) -> int:
        """A producer initialised ``transactional_id``: its epoch; older producers with it are fenced, and
        their open transaction is aborted (as Kafka's coordinator does on InitProducerId)."""
        with self.lock:
            for producer in self._open_transactions(transactional_id):
                self.end_transaction(producer.txn, commit=False)  # type: ignore[arg-type]
            self.epochs[transactional_id] = self.epochs.get(transactional_id, -1) + 1
            return self.epochs[transactional_id]

    def time_out_transactions(self) -> None:
        """What the coordinator does to a transaction open past ``transaction.timeout.ms``: it is aborted
        and its producer's epoch bumped, so that producer's next call fails with a fatal error."""
        with self.lock:
            for transactional_id in list(self.epochs):
                for producer in self._open_transactions(transactional_id):
                    if producer.epoch == self.epochs[transactional_id]:
                        self.end_transaction(producer.txn, commit=False)  # type: ignore[arg-type]
                        self.epochs[transactional_id] += 1

    def _open_transactions(self, transactional_id: str) -> list[InMemoryProducer]:
        return [p for p in self.producers if p.transactional_id == transactional_id
                and p.txn is not None and p.txn.state == "open"]  # fmt: skip

    def end_transaction(self, txn: Transaction, *, commit: bool) -> None:
        with self.changed:
            txn.state = "committed" if commit else "aborted"
            if commit:
                for group_id, points in txn.offsets.items():
                    self.group(group_id).committed.update(points)
            self.changed.notify_all()

    # --- faults a test injects --------------------------------------------------------------------------

    def fail_deliveries(
        self,
        topic: str,
        error: KafkaError,
        *,
        count: int = 1,
        partition: int | None = None,
        key: bytes | None = None,
    ) -> None:
        """The next ``count`` deliveries to ``topic`` (of one partition or key, or any) fail: ``error``."""
        with self.lock:
            self.delivery_faults.append(DeliveryFault(topic, error, count, partition, key))

    def delivery_fault(self, topic: str, partition: int, key: bytes | None) -> KafkaError | None:
        for fault in self.delivery_faults:
            if fault.matches(topic, partition, key):
                fault.count -= 1
                return fault.error
        return None

    def ack_unwritten(self, topic: str, *, count: int = 1, partition: int | None = None) -> None:
        """The next ``count`` deliveries to ``topic`` are reported delivered with no offset and not written,
        as librdkafka reports a batch implicitly acknowledged by a later one that a recreated topic took."""
        self.fail_deliveries(topic, UNWRITTEN_ACK, count=count, partition=partition)

    def fail_commit(self, error: KafkaError) -> None:
        """The next ``commit_transaction`` fails with ``error`` (made abortable, as a broker error is)."""
        with self.lock:
            self.commit_faults.append(error)

    def fail_abort(self, error: KafkaError) -> None:
        """The next ``abort_transaction`` raises ``error`` as it is (fatal, retriable or neither)."""
        with self.lock:
            self.abort_faults.append(error)

    def stall_offsets(self, stalled: bool = True) -> None:
        """``send_offsets_to_transaction`` blocks, past its timeout, until ``stall_offsets(False)``: what
        librdkafka does while it waits for a group coordinator it no longer looks for (#5456, #5511)."""
        if stalled:
            self.offsets_open.clear()
        else:
            self.offsets_open.set()

    def hold(self, *topics: str) -> None:
        """Deliveries to ``topics`` stay in flight (no report) until ``release`` or ``expire_held``."""
        with self.lock:
            self.held.update(topics)

    def release(self, *topics: str) -> None:
        with self.changed:
            self.held.difference_update(topics or set(self.held))
            self.changed.notify_all()

    def expire_held(self, *, persisted: bool = False) -> None:
        """Every held delivery times out (``_MSG_TIMED_OUT``); ``persisted``: written to the log anyway, as a
        request that reached the leader before the producer gave up."""
        for producer in list(self.producers):
            producer.expire_held(persisted=persisted)


if TYPE_CHECKING:
    from worker.runtime.inmemory.clients import InMemoryClients
