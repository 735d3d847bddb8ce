"""Avro decode and encode against fastavro, for the car-insurance event and score schemas.

Figures (medians of interleaved repeats, measured side by side in one run):
- ``decode_speedup_vs_fastavro``: fastavro ``schemaless_reader`` per record plus building the same columns,
  divided by ``BatchDecoder.decode`` (Confluent framing, batch of 1000); floor 5.
- ``encode_speedup_vs_fastavro``: fastavro ``schemaless_writer`` per record divided by ``ScoreEncoder.encode``
  per record (batch of 1000); floor 4.
- the absolute microseconds per event of each.
"""

from __future__ import annotations

import io
import random
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro

from worker.avro.convert import columns_from_records
from worker.avro.decoder import BatchDecoder
from worker.avro.encoder import ScoreEncoder
from worker.avro.schema import AvroSchema, layout

SCHEMAS = Path(__file__).parents[1] / "schemas"
BATCH = 1000
REPEATS = 31


class _OneSchema:
    def __init__(self, schema: AvroSchema) -> None:
        self.schema = schema

    def schema_by_id(self, schema_id: int) -> AvroSchema:
        return self.schema


def events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    pick = rnd.choice
    return [
        {
            "ecid": f"{rnd.getrandbits(64):016x}",
            "km": None if rnd.random() < 0.1 else rnd.randint(1000, 60000),
            "cartype": pick(["SUV", "Sedan", "Compact", "Convertible", "Van"]),
            "age": None if rnd.random() < 0.1 else rnd.randint(18, 90),
            "gender": pick([None, "male", "female", "other"]),
            "carbrand": pick(["VW", " bmw", "Audi ", "Citroën", "Škoda", "Tesla"]),
            "leasing": rnd.random() < 0.3,
            "city": pick(["Zürich", "Basel", "Genève", "Lausanne", "Bern"]),
            "country": pick(["CH", "DE", "FR"]),
            "nationality": pick(["CH", "DE", "FR", "IT", "PT"]),
            "primaryuser": pick(["yes", "no"]),
            "pricequote": round(rnd.uniform(300, 3000), 2),
            "timestamp": 1_700_000_000_000 + i * 37,
        }
        for i in range(n)
    ]


def _median_us(fn: Callable[[], object], per: int, samples: list[float]) -> None:
    started = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - started) * 1e6 / per)


def _write(schema: AvroSchema, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def run() -> dict[str, float]:
    event = AvroSchema.load(SCHEMAS / "car_insurance_event.avsc")
    score = AvroSchema.load(SCHEMAS / "car_insurance_score.avsc")
    records = events(BATCH)
    values = [b"\x00" + struct.pack(">I", 1) + _write(event, r) for r in records]
    partitions, offsets = [0] * BATCH, list(range(BATCH))
    decoder = BatchDecoder(event, registry=_OneSchema(event))
    leaves = layout(event)

    def ours_decode() -> object:
        return decoder.decode(values, topic="bench", partitions=partitions, offsets=offsets)

    def fastavro_decode() -> object:
        parsed = event.parsed
        out = [fastavro.schemaless_reader(io.BytesIO(v[5:]), parsed, None) for v in values]
        return columns_from_records(leaves, out)  # type: ignore[arg-type]

    rnd = random.Random(11)
    scores = [
        {"ecid": r["ecid"], "score": rnd.random(), "label": rnd.randint(0, 1), "timestamp": r["timestamp"]}
        for r in records
    ]
    columns = columns_from_records(layout(score), scores)
    encoder = ScoreEncoder(score)
    assert encoder.encode(columns).values == [_write(score, s) for s in scores]

    def ours_encode() -> object:
        return encoder.encode(columns)

    def fastavro_encode() -> object:
        return [_write(score, s) for s in scores]

    samples: dict[str, list[float]] = {k: [] for k in ("dec", "dec_ref", "enc", "enc_ref")}
    for _ in range(REPEATS):  # interleaved, so both sides see the same noise
        _median_us(ours_decode, BATCH, samples["dec"])
        _median_us(fastavro_decode, BATCH, samples["dec_ref"])
        _median_us(ours_encode, BATCH, samples["enc"])
        _median_us(fastavro_encode, BATCH, samples["enc_ref"])
    m = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "avro_decode_us_per_event": m["dec"],
        "avro_decode_fastavro_us_per_event": m["dec_ref"],
        "decode_speedup_vs_fastavro": m["dec_ref"] / m["dec"],
        "avro_encode_us_per_record": m["enc"],
        "avro_encode_fastavro_us_per_record": m["enc_ref"],
        "encode_speedup_vs_fastavro": m["enc_ref"] / m["enc"],
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name}: {value:.3f}")
