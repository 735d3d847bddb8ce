"""The verifier against real topics, with outputs written by the test itself in place of the worker.

A perfect answer (one score or dead-letter record per input, lineage headers, read through a transactional
producer) must verify clean, and an aborted transaction must stay invisible; then one lost, one duplicated,
one wrong and one reordered output must each be counted, from Kafka, as exactly that.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import fastavro
import pytest
from confluent_kafka import Producer
from harness import SCORE_SCHEMA, plan_events, produce, register_schema
from scenario import Scenario
from verifier import Source, Sources, read_outputs

EVENTS = 2000
PARTITIONS = 4


def score_value(schema_id: int, fields: Mapping[str, Any]) -> bytes:
    schema = fastavro.parse_schema(json.loads(SCORE_SCHEMA.read_text()))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, dict(fields))
    return b"\x00" + struct.pack(">I", schema_id) + buffer.getvalue()


def answer(topic: str, partition: int, offset: int, source: Source, schema_id: int, digest: str) -> tuple:
    """(output topic kind, value, headers) the worker must write for ``source``."""
    if source.expected is None:
        hdrs = [("rtml.errors.topic", topic.encode()), ("rtml.errors.partition", b"%d" % partition),
                ("rtml.errors.offset", b"%d" % offset), ("rtml.errors.stage", b"decode"),
                ("rtml.errors.exception.class.name", b"DecodeError"),
                ("rtml.errors.exception.message", b"test")]  # fmt: skip
        return "dead_letter", source.value, hdrs
    hdrs = [("rtml.source.topic", topic.encode()), ("rtml.source.partition", b"%d" % partition),
            ("rtml.source.offset", b"%d" % offset), ("rtml.graph.digest", digest.encode()),
            ("rtml.model.ids", b"m"), ("rtml.schema.id", b"1")]  # fmt: skip
    return "score", score_value(schema_id, source.expected), hdrs


def write_answers(
    s: Scenario, sources: Sources, schema_id: int, *, skip: Callable[[int, int], bool] = lambda p, o: False
) -> Producer:
    producer = Producer({"bootstrap.servers": s.bootstrap_servers, "transactional.id": uuid.uuid4().hex})
    producer.init_transactions(30)
    producer.begin_transaction()
    for partition, offsets in sources.items():
        for offset, source in sorted(offsets.items()):
            if skip(partition, offset):
                continue
            kind, value, hdrs = answer(s.input_topic, partition, offset, source, schema_id, s.graph.digest)
            topic = s.score_topic if kind == "score" else s.dead_letter_topic
            producer.produce(topic, value, source.key, partition=partition, headers=hdrs)
    producer.commit_transaction(60)
    return producer


def test_verifier_on_real_topics(scenario: Callable[..., Scenario]) -> None:
    s = scenario(partitions=PARTITIONS, replicas=0)
    planned = plan_events(s.graph, EVENTS, seed=3, schema_id=s.schema_id, poison_ratio=0.02)
    sources = produce(s.bootstrap_servers, s.input_topic, planned)
    assert sum(len(o) for o in sources.values()) == EVENTS
    poison = [x for x in planned if x.poison]
    assert poison and all(x.expected is None for x in poison), "every poison kind must be rejected offline"
    score_id = register_schema(s.registry_url, f"{s.score_topic}-value", SCORE_SCHEMA)

    lost = (1, sorted(o for o, x in sources[1].items() if x.expected is not None)[5])
    producer = write_answers(s, sources, score_id, skip=lambda p, o: (p, o) == lost)
    report = s.verify(sources)
    assert report.lost == 1 and report.partitions[1].lost == 1, report.render()
    assert report.duplicated == report.wrong == report.out_of_order == report.unknown == 0, report.render()
    assert report.total("dead_lettered") == len(poison)

    # An aborted transaction with garbage is invisible to the read_committed verifier.
    producer.begin_transaction()
    producer.produce(s.score_topic, b"garbage", b"k", partition=0, headers=[("rtml.source.topic", b"x")])
    producer.abort_transaction(30)
    # Then a replay of two scores of partition 2 (duplicates, which do not count as reordering), and the
    # lost score, late (after higher offsets of its partition: out of order) and off by 0.01 (wrong).
    producer.begin_transaction()
    for offset in sorted(o for o, x in sources[2].items() if x.expected is not None)[:2]:
        _, value, hdrs = answer(s.input_topic, 2, offset, sources[2][offset], score_id, s.graph.digest)
        producer.produce(s.score_topic, value, sources[2][offset].key, partition=2, headers=hdrs)
    source = sources[lost[0]][lost[1]]
    assert source.expected is not None
    off = Source(source.key, source.value, {**source.expected, "score": source.expected["score"] + 0.01})
    _, value, hdrs = answer(s.input_topic, *lost, off, score_id, s.graph.digest)
    producer.produce(s.score_topic, value, source.key, partition=lost[0], headers=hdrs)
    producer.commit_transaction(30)

    report = s.verify(sources)
    assert report.lost == 0, report.render()
    assert report.duplicated == 2 and report.partitions[2].duplicated == 2, report.render()
    assert report.out_of_order == 1 and report.partitions[1].out_of_order == 1, report.render()
    assert report.wrong == 1 and report.partitions[1].wrong == 1, report.render()
    assert report.unknown == 0 and report.misrouted == 0, report.render()


def test_an_open_transaction_does_not_hide_what_was_committed_after_it(
    bootstrap_servers: str, new_topic: Callable[..., str]
) -> None:
    """A replica killed inside a transaction leaves it open until the coordinator times it out. A reader
    that stopped at the watermark a read_committed client is told (the last stable offset, which the open
    transaction holds back) saw none of the scores committed after it, and the verifier counted them lost.
    The reader must read up to the log's real end, or fail naming the partition."""
    topic = new_topic(1, prefix="rt-open")
    held = Producer({"bootstrap.servers": bootstrap_servers, "transactional.id": uuid.uuid4().hex,
                     "transaction.timeout.ms": 60_000})  # fmt: skip
    held.init_transactions(30)
    held.begin_transaction()
    held.produce(topic, b"open", partition=0)
    held.flush(30)  # written, never committed: the partition's last stable offset stays at it
    after = Producer({"bootstrap.servers": bootstrap_servers, "transactional.id": uuid.uuid4().hex})
    after.init_transactions(30)
    after.begin_transaction()
    for i in range(3):
        after.produce(topic, b"after-%d" % i, partition=0)
    after.commit_transaction(30)

    with pytest.raises(TimeoutError, match=rf"{topic}: partitions .* not read up: {{0: "):
        read_outputs(bootstrap_servers, topic, "score", timeout_s=3)
    held.abort_transaction(30)
    values = [out.value for out in read_outputs(bootstrap_servers, topic, "score", timeout_s=30)]
    assert values == [b"after-0", b"after-1", b"after-2"]
