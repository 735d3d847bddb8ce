"""Message keys as a column: ``string`` (UTF-8), ``bytes`` (as is) or ``avro`` (a record, like values).

The runtime may call ``KeyDecoder.decode`` per batch when a graph reads the key; keys are otherwise carried
over to the score records untouched. A null key is a null in the column (keys are optional in Kafka), an
undecodable one a ``DecodeError`` with the raw key bytes in ``key=``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from worker.avro.decoder import BatchDecoder
from worker.columns import StageResult
from worker.errors import DecodeError

KeyKind = Literal["string", "bytes", "avro"]
KEY_COLUMN = "key"


class KeyDecoder:
    """Decodes the keys of one input topic; ``avro`` needs a ``BatchDecoder`` over the key schema."""

    def __init__(self, kind: KeyKind, *, avro: BatchDecoder | None = None) -> None:
        if (kind == "avro") != (avro is not None):
            raise ValueError("an avro key kind needs a BatchDecoder, and only it")
        self.kind = kind
        self._avro = avro

    def decode(
        self, keys: Sequence[bytes | None], *, topic: str, partitions: Sequence[int], offsets: Sequence[int]
    ) -> StageResult[DecodeError]:
        """One column ``key`` (string/bytes) or the key record's columns prefixed ``key.`` (avro)."""
        if self._avro is not None:
            result = self._avro.decode(keys, topic=topic, partitions=partitions, offsets=offsets)
            for error in result.errors.values():
                error.key, error.value = error.value, None
            columns = {f"{KEY_COLUMN}.{name}": column for name, column in result.columns.items()}
            return StageResult(columns, result.rows, result.errors)
        column = np.empty(len(keys), dtype=object)
        column[:] = list(keys)
        errors: dict[int, DecodeError] = {}
        if self.kind == "string":
            for i, key in enumerate(keys):
                try:
                    column[i] = None if key is None else key.decode()
                except UnicodeDecodeError as exc:
                    errors[i] = DecodeError(
                        f"key is not UTF-8: {exc}",
                        topic=topic,
                        partition=partitions[i],
                        offset=offsets[i],
                        key=key,
                    )
        rows = np.array([i for i in range(len(keys)) if i not in errors], dtype=np.int64)
        return StageResult({KEY_COLUMN: column[rows]}, rows, errors)
