"""Avro in, Avro out: Confluent or plain framing, a pinned reader schema, batch decode to columns, encode.

Decode: ``BatchDecoder`` (``worker.avro.decoder``) with writer schemas from ``SchemaRegistryClient``
(``worker.avro.registry``) or one configured schema, guarded by ``Limits`` (``worker.avro.guards``).
Encode: ``ScoreEncoder`` (``worker.avro.encoder``). Schemas: ``AvroSchema`` (``worker.avro.schema``).
"""

from __future__ import annotations

from worker.avro.decoder import BatchDecoder, WriterSchemas
from worker.avro.encoder import Encoded, ScoreEncoder
from worker.avro.guards import Limits
from worker.avro.registry import RegistryConfig, SchemaNotFound, SchemaRegistryClient
from worker.avro.schema import AvroSchema, Leaf, SchemaParseError, layout

__all__ = [
    "AvroSchema",
    "BatchDecoder",
    "Encoded",
    "Leaf",
    "Limits",
    "RegistryConfig",
    "SchemaNotFound",
    "SchemaParseError",
    "SchemaRegistryClient",
    "ScoreEncoder",
    "WriterSchemas",
    "layout",
]
