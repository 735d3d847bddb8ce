"""``BatchDecoder``: a batch of Kafka message values to columns of the pinned reader schema.

The runtime calls ``decode`` once per batch of consumed messages (it blocks only while fetching an unseen
writer schema from the registry). Framing is either the Confluent wire format (magic byte 0, 4-byte big-endian
schema id, Avro body; writer schemas fetched by id) or plain Avro with one configured writer schema.

Per writer schema the decoder caches a plan: the resolution verdict against the reader schema and, when the
pair allows it, a compiled fast reader. Rows of one writer schema are decoded together on the fast path;
rows it rejects, and schemas it cannot read, go through the per-record path: guards first
(``worker.avro.guards.prescan``), then fastavro's resolving reader. Both paths build columns with one
convention, so a row decodes to the same values whichever path took it.

Raises ``RegistryUnavailable`` (infrastructure: the batch waits or the worker stops). Everything wrong with a
single message comes back as a ``DecodeError`` in ``StageResult.errors`` with topic, partition, offset, schema
id and the raw bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import fastavro
import numpy as np
import numpy.typing as npt

from worker.avro.convert import columns_from_records
from worker.avro.fastpath import FastReader, Unsupported, compile_fast
from worker.avro.guards import Limits, prescan
from worker.avro.registry import SchemaNotFound
from worker.avro.resolve import incompatibility
from worker.avro.schema import AvroSchema, Leaf, layout
from worker.avro.vector import PADDING, Cursor
from worker.columns import Batch, StageResult
from worker.errors import DecodeError

CONFLUENT_HEADER = 5
Rows = npt.NDArray[np.intp]


class WriterSchemas(Protocol):
    """Where writer schemas come from (``SchemaRegistryClient`` or a test double)."""

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        """The schema; raises SchemaNotFound (record error) or RegistryUnavailable (infrastructure)."""
        ...


@dataclass(frozen=True)
class _Plan:
    writer: AvroSchema
    refusal: str | None
    fast: FastReader | None


class BatchDecoder:
    """Decodes one input topic: Confluent framing with ``registry``, or plain Avro with ``writer``."""

    def __init__(
        self,
        reader: AvroSchema,
        *,
        registry: WriterSchemas | None = None,
        writer: AvroSchema | None = None,
        limits: Limits | None = None,
        fast_path: bool = True,
    ) -> None:
        if (registry is None) == (writer is None):
            raise ValueError("give exactly one of registry (Confluent framing) or writer (plain Avro)")
        self.reader = reader
        self.leaves: tuple[Leaf, ...] = layout(reader)
        self.limits = limits or Limits()
        self._registry = registry
        self._fast_path = fast_path
        self._header = CONFLUENT_HEADER if registry is not None else 0
        self._plans: dict[int | None, _Plan] = {}
        if writer is not None:
            self._plans[None] = self._make_plan(writer)

    @property
    def framing(self) -> Literal["confluent", "plain"]:
        """Confluent wire format (magic byte, schema id) with a registry, or plain Avro bodies."""
        return "confluent" if self._registry is not None else "plain"

    def decode(
        self, values: Sequence[bytes | None], *, topic: str, partitions: Sequence[int], offsets: Sequence[int]
    ) -> StageResult[DecodeError]:
        """Decode one batch; every input row ends up in ``rows`` or ``errors``. May block on the registry."""
        job = _Job(self, values, topic, partitions, offsets)
        ids = job.frame()[job.pending]
        if ids.size and bool((ids == ids[0]).all()):  # one writer schema: the common case, without a sort
            self._decode_group(job, None if self._registry is None else int(ids[0]), job.pending)
        elif ids.size:
            for schema_id in np.unique(ids).tolist():
                rows = job.pending[ids == schema_id]
                self._decode_group(job, None if self._registry is None else int(schema_id), rows)
        return job.result()

    def _decode_group(self, job: _Job, schema_id: int | None, rows: Rows) -> None:
        try:
            plan = self._plan(schema_id)
        except SchemaNotFound as exc:
            job.fail_all(rows, f"unknown writer schema id {schema_id}: {exc}", schema_id)
            return
        if plan.refusal is not None:
            job.fail_all(
                rows,
                f"writer schema {schema_id} cannot be read as the reader schema: {plan.refusal}",
                schema_id,
            )
            return
        if plan.fast is not None:
            cursor = Cursor(job.data, job.starts[rows] + self._header, job.ends[rows], padded=True)
            good, columns = plan.fast.read(cursor, slice(None))
            job.parts.append((rows[good], columns))
            rows = rows[~good]
        if rows.size:
            self._decode_each(job, plan, schema_id, rows)

    def _decode_each(self, job: _Job, plan: _Plan, schema_id: int | None, rows: Rows) -> None:
        """The per-record path: guards, then fastavro's resolving reader; the authority on every row."""
        records: list[dict[str, Any]] = []
        kept: list[int] = []
        reader = None if plan.writer is self.reader else self.reader.parsed
        for i in rows.tolist():
            body = job.data[job.starts[i] + self._header : job.ends[i]]
            reason = prescan(plan.writer, body, self.limits)
            if reason is None:
                try:
                    record = fastavro.schemaless_reader(io.BytesIO(body), plan.writer.parsed, reader)
                    records.append(record)  # type: ignore[arg-type]  # a record schema reads a dict
                    kept.append(i)
                    continue
                except Exception as exc:  # a third-party reader on untrusted bytes: translated here, once
                    reason = f"invalid Avro body: {type(exc).__name__}: {exc}"
            job.fail(i, reason, schema_id)
        if kept:
            job.parts.append((np.array(kept, dtype=np.intp), columns_from_records(self.leaves, records)))

    def _plan(self, schema_id: int | None) -> _Plan:
        plan = self._plans.get(schema_id)
        if plan is None:
            assert self._registry is not None and schema_id is not None
            plan = self._plans[schema_id] = self._make_plan(self._registry.schema_by_id(schema_id))
        return plan

    def _make_plan(self, writer: AvroSchema) -> _Plan:
        refusal = incompatibility(writer, self.reader)
        fast = None
        if refusal is None and self._fast_path:
            try:
                fast = compile_fast(writer, self.reader)
            except Unsupported:
                fast = None
        return _Plan(writer=writer, refusal=refusal, fast=fast)


class _Job:
    """The state of one ``decode`` call: the joined payloads, the rows still to decode, parts and errors."""

    def __init__(
        self,
        decoder: BatchDecoder,
        values: Sequence[bytes | None],
        topic: str,
        partitions: Sequence[int],
        offsets: Sequence[int],
    ) -> None:
        self.decoder = decoder
        self.values = values
        self.topic = topic
        self.partitions = partitions
        self.offsets = offsets
        self.parts: list[tuple[Rows, Batch]] = []
        self.errors: dict[int, DecodeError] = {}
        self.data = b""
        self.starts = self.ends = np.zeros(0, dtype=np.int64)
        self.pending: Rows = np.zeros(0, dtype=np.intp)

    def frame(self) -> npt.NDArray[np.int64]:
        """Check sizes and framing for the whole batch at once; the schema id of every row (0 when plain)."""
        values = self.values
        nulls = [i for i, v in enumerate(values) if v is None] if None in values else []
        present: Sequence[bytes] = [b"" if v is None else v for v in values] if nulls else values  # type: ignore[assignment]
        lens = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
        ok = np.ones(len(values), dtype=np.bool_)
        for i in nulls:
            self.fail(i, "null value (a tombstone) where an Avro record was expected", None)
        if nulls:
            ok[nulls] = False
        limit = self.decoder.limits.max_message_bytes
        oversized = np.flatnonzero(lens > limit).tolist() if int(lens.max(initial=0)) > limit else []
        if oversized:  # refused before any copy: a huge value never reaches the joined buffer
            present = list(present)
            for i in oversized:
                self.fail(i, f"message of {lens[i]} bytes exceeds max_message_bytes={limit}", None)
                present[i] = b""
            ok[oversized] = False
            lens[oversized] = 0
        self.data = b"".join([*present, PADDING])  # padded once, for the header reads and the ``Cursor``
        self.ends = np.cumsum(lens)
        self.starts = self.ends - lens
        clean = not (nulls or oversized)
        if self.decoder._header:
            ids = self._confluent(ok, lens)
            clean = clean and bool(ok.all())
        else:
            ids = np.zeros(len(values), dtype=np.int64)
        self.pending = np.arange(len(values), dtype=np.intp) if clean else np.flatnonzero(ok)
        return ids

    def _confluent(self, ok: npt.NDArray[np.bool_], lens: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Check every row's header, clearing ``ok`` where it is wrong; the schema id of every row."""
        # The 5 header bytes read in place (the padding covers rows shorter than a header).
        buf = np.frombuffer(self.data, dtype=np.uint8)
        magic = buf[self.starts]
        words = np.ndarray((len(buf) - 3, 4), np.uint8, buf, 0, (1, 1))[self.starts + 1]
        ids: npt.NDArray[np.int64] = words.view(">u4").ravel().astype(np.int64)
        short = lens <= CONFLUENT_HEADER
        if not (short.any() or magic.any()):
            return ids
        for i in np.flatnonzero(ok & short).tolist():
            self.fail(i, f"payload of {lens[i]} bytes is too short for the Confluent wire format (> 5)", None)
        ok &= ~short
        for i in np.flatnonzero(ok & (magic != 0)).tolist():
            self.fail(i, f"unknown magic byte {int(magic[i]):#04x}: expected 0 (Confluent wire format)", None)
        ok &= magic == 0
        return ids

    def fail(self, i: int, reason: str, schema_id: int | None) -> None:
        self.errors[i] = DecodeError(
            reason,
            topic=self.topic,
            partition=self.partitions[i],
            offset=self.offsets[i],
            schema_id=schema_id,
            value=self.values[i],
        )

    def fail_all(self, rows: Rows, reason: str, schema_id: int | None) -> None:
        for i in rows.tolist():
            self.fail(i, reason, schema_id)

    def result(self) -> StageResult[DecodeError]:
        leaves = self.decoder.leaves
        if not self.parts:
            empty = {leaf.name: np.empty(0, dtype=leaf.dtype) for leaf in leaves}
            return StageResult(empty, np.zeros(0, dtype=np.int64), self.errors)
        if len(self.parts) == 1:
            rows, columns = self.parts[0]
            return StageResult(columns, rows.astype(np.int64), self.errors)
        rows = np.concatenate([p[0] for p in self.parts])
        order = np.argsort(rows, kind="stable")
        columns = {leaf.name: np.concatenate([p[1][leaf.name] for p in self.parts])[order] for leaf in leaves}
        return StageResult(columns, rows[order].astype(np.int64), self.errors)
