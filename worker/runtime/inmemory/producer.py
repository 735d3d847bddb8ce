"""``InMemoryProducer``: the ``ProducerClient`` calls over an ``InMemoryBroker``.

``produce`` only queues, as librdkafka does: a message larger than ``message.max.bytes`` raises
``KafkaException(MSG_SIZE_TOO_LARGE)`` at once, a full queue (``queue.buffering.max.messages``) raises
``BufferError``. Messages are written to the log, and their delivery reports run, in ``poll`` and ``flush``,
per partition in produce order. A delivery fails with an injected fault, with MSG_SIZE_TOO_LARGE above the
topic's ``max.message.bytes``, or with UNKNOWN_TOPIC_OR_PART for a missing topic; a failed message does not
stop the ones after it (a gap, as without ``enable.gapless.guarantee``). After
``InMemoryBroker.ack_unwritten`` one is reported delivered with no offset and not written. A fatal fault (the
idempotent producer's OUT_OF_ORDER_SEQUENCE_NUMBER after a leader bounce) fails its message and puts the
producer in librdkafka's fatal state: ``error_cb`` hears it once, and ``poll``, ``flush``, ``produce`` and
every transactional call raise it from then on. Deliveries to held topics stay in flight until released,
purged or expired.

With ``transactional.id``: ``init_transactions`` fences every older producer of that id (their next call
raises a fatal ``_FENCED``, and their open transaction is aborted), as does a transaction the broker times
out (``time_out_transactions``); records of a transaction stay invisible to read_committed readers until
``commit_transaction``, which raises an abortable error when one of its messages failed or a fault was
injected; ``abort_transaction`` drops what is queued and hides what was written (or raises an injected
fault); one called while outputs are still queued or held is counted (``aborts_holding_outputs``), since
librdkafka can abort the process then. While the broker stalls
offsets (``stall_offsets``), ``send_offsets_to_transaction`` blocks past any timeout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from worker.runtime.clients import OnDelivery
from worker.runtime.inmemory.broker import UNWRITTEN_ACK, InMemoryBroker, Record, Transaction
from worker.runtime.inmemory.consumer import GroupMetadata


@dataclass
class _Out:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    on_delivery: OnDelivery | None
    txn: Transaction | None


class InMemoryProducer:
    """See the module docstring. Not thread-safe, like a librdkafka handle's poll."""

    def __init__(self, broker: InMemoryBroker, config: Mapping[str, Any]) -> None:
        self.broker = broker
        self.max_bytes = int(config.get("message.max.bytes", 1_000_000))
        self.max_queued = int(config.get("queue.buffering.max.messages", 100_000))
        self.error_cb = config.get("error_cb")
        self.transactional_id: str | None = config.get("transactional.id")
        self.epoch: int | None = None
        self.txn: Transaction | None = None
        self.txn_failed: KafkaError | None = None
        self.fatal: KafkaError | None = None  # librdkafka's fatal error state, once entered
        self.queue: deque[_Out] = deque()
        self.reports: deque[tuple[OnDelivery, KafkaError | None, Message]] = deque()
        broker.producers.append(self)

    def __len__(self) -> int:
        return len(self.queue) + len(self.reports)

    # --- producing --------------------------------------------------------------------------------------

    def produce(  # noqa: PLR0917 - librdkafka's signature
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int = -1,
        on_delivery: OnDelivery | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        **_: Any,
    ) -> None:
        self._check_fenced()
        if _size(key, value, headers) > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large"))
        if len(self) >= self.max_queued:
            raise BufferError("Local: Queue full")
        with self.broker.lock:
            if topic not in self.broker.logs:
                raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, "Local: Unknown topic"))
            part = self.broker.partition_for(topic, key) if partition < 0 else partition
        self.queue.append(_Out(topic, part, key, value, list(headers or ()) or None, on_delivery, self.txn))

    def poll(self, timeout: float = 0) -> int:
        served = self._serve()
        if not served and timeout:
            with self.broker.changed:
                if not self.reports:
                    self.broker.changed.wait(timeout)
            served = self._serve()
        return served

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        if self.queue and timeout != 0:
            with self.broker.changed:
                self.broker.changed.wait(None if timeout < 0 else timeout)
            self.poll(0)
        return len(self)

    def _serve(self) -> int:
        """Deliver what is not held, in produce order per partition, then run the delivery reports."""
        with self.broker.lock:
            blocked: set[tuple[str, int]] = set()
            kept: deque[_Out] = deque()
            for out in self.queue:
                tp = (out.topic, out.partition)
                if tp in blocked or out.topic in self.broker.held:
                    blocked.add(tp)
                    kept.append(out)
                else:
                    self._deliver(out)
            self.queue = kept
        served = 0
        while self.reports:
            callback, error, message = self.reports.popleft()
            callback(error, message)
            served += 1
        if self.fatal is not None:
            raise KafkaException(self.fatal)
        return served

    def _deliver(self, out: _Out) -> None:
        broker = self.broker
        error = None
        offset = -1001
        if out.topic not in broker.logs:
            error = KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, "Broker: Unknown topic or partition")
        else:
            error = broker.delivery_fault(out.topic, out.partition, out.key)
            if error is None and _size(out.key, out.value, out.headers) > broker.max_message_bytes[out.topic]:
                error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
        if error is UNWRITTEN_ACK:
            error = None  # reported delivered, with no offset, and not written
        elif error is None:
            record = Record(out.key, out.value, out.headers, broker.tick(), out.txn)
            offset = broker.append(out.topic, out.partition, record)
        elif out.txn is not None and self.txn_failed is None:
            self.txn_failed = error
        if error is not None and error.fatal() and self.fatal is None:
            self.fatal = error
            if self.error_cb is not None:
                self.error_cb(error)
        self._report(out, error, offset)

    def _report(self, out: _Out, error: KafkaError | None, offset: int) -> None:
        if out.on_delivery is not None:
            message = Message(
                topic=out.topic, partition=out.partition, offset=offset, key=out.key, value=out.value,
                headers=out.headers, error=error,  # type: ignore[arg-type]
            )  # fmt: skip
            self.reports.append((out.on_delivery, error, message))

    def purge(self, in_queue: bool = True, in_flight: bool = True, blocking: bool = True) -> None:
        """Fail queued messages (``_PURGE_QUEUE``) and, with ``in_flight``, the held (``_PURGE_INFLIGHT``)."""
        with self.broker.lock:
            kept: deque[_Out] = deque()
            for out in self.queue:
                held = out.topic in self.broker.held
                if held and in_flight:
                    self._report(out, KafkaError(KafkaError._PURGE_INFLIGHT), -1001)
                elif not held and in_queue:
                    self._report(out, KafkaError(KafkaError._PURGE_QUEUE), -1001)
                else:
                    kept.append(out)
            self.queue = kept

    def expire_held(self, *, persisted: bool) -> None:
        """Held messages time out; with ``persisted`` they were written all the same."""
        with self.broker.lock:
            kept: deque[_Out] = deque()
            for out in self.queue:
                if out.topic not in self.broker.held:
                    kept.append(out)
                    continue
                if persisted:
                    record = Record(out.key, out.value, out.headers, self.broker.tick(), out.txn)
                    self.broker.append(out.topic, out.partition, record)
                timed_out = KafkaError(KafkaError._MSG_TIMED_OUT, "Local: Message timed out")
                if out.txn is not None and self.txn_failed is None:
                    self.txn_failed = timed_out  # as librdkafka: the transaction must be aborted
                self._report(out, timed_out, -1001)
            self.queue = kept

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        with self.broker.lock:
            names = [topic] if topic is not None else list(self.broker.logs)
            topics = {
                name: SimpleNamespace(
                    error=None, partitions={p: None for p in range(len(self.broker.logs[name]))}
                )
                for name in names
                if name in self.broker.logs
            }
        return SimpleNamespace(topics=topics)

    # --- transactions -----------------------------------------------------------------------------------

    def _check_fenced(self) -> None:
        if self.fatal is not None:
            raise KafkaException(self.fatal)
        if self.transactional_id is None or self.epoch is None:
            return
        if self.broker.epochs.get(self.transactional_id) != self.epoch:
            error = KafkaError(KafkaError._FENCED, "producer fenced by a newer instance", fatal=True)
            if self.error_cb is not None:
                self.error_cb(error)
            raise KafkaException(error)

    def init_transactions(self, timeout: float = -1) -> None:
        if self.transactional_id is None:
            raise KafkaException(KafkaError(KafkaError._NOT_CONFIGURED))
        self.epoch = self.broker.register_transactional_id(self.transactional_id)

    def begin_transaction(self) -> None:
        self._check_fenced()
        if self.txn is not None:
            raise KafkaException(KafkaError(KafkaError._STATE, "transaction already in progress"))
        self.txn, self.txn_failed = Transaction(), None

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self.broker.offsets_open.wait()  # no timeout: a stall the test injects outlives ``timeout``
        self._check_fenced()
        txn = self._open()
        metadata: GroupMetadata = group_metadata
        group = self.broker.group(metadata.group_id)
        # As Kafka's coordinator: no member id and generation -1 is taken whatever the group holds (older
        # clients send no group metadata); a member the group no longer has is refused.
        outside = metadata.member is None and metadata.generation < 0
        if not outside and (metadata.member is None or metadata.member not in group.members):
            error = KafkaError(
                KafkaError.UNKNOWN_MEMBER_ID, "the consumer left the group", txn_requires_abort=True
            )
            raise KafkaException(error)
        points = txn.offsets.setdefault(metadata.group_id, {})
        points.update({(tp.topic, tp.partition): tp.offset for tp in positions})

    def commit_transaction(self, timeout: float = -1) -> None:
        self._check_fenced()
        txn = self._open()
        self.flush(timeout)
        self._check_fenced()  # the coordinator may have timed the transaction out meanwhile
        with self.broker.lock:
            fault = self.broker.commit_faults.pop(0) if self.broker.commit_faults else None
        failed = fault or self.txn_failed
        if failed is not None:
            raise KafkaException(KafkaError(failed.code(), str(failed), txn_requires_abort=True))
        if self.queue:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "commit timed out", retriable=True))
        self.broker.end_transaction(txn, commit=True)
        self.txn = None

    def abort_transaction(self, timeout: float = -1) -> None:
        self._check_fenced()
        txn = self._open()
        if self.queue:
            with self.broker.lock:
                self.broker.aborts_holding_outputs += 1
        with self.broker.lock:
            fault = self.broker.abort_faults.pop(0) if self.broker.abort_faults else None
        if fault is not None:
            raise KafkaException(fault)
        self.purge(in_queue=True, in_flight=True)
        self.poll(0)
        self.broker.end_transaction(txn, commit=False)
        self.txn = None

    def _open(self) -> Transaction:
        if self.txn is None:
            raise KafkaException(KafkaError(KafkaError._STATE, "no transaction in progress"))
        return self.txn


def _size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> int:
    """A record's size as the size limits count it: key, value and headers (framing left out)."""
    return len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"") for k, v in headers or ())
