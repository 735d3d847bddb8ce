"""Kafka record headers the worker writes: lineage on every score, the error envelope on dead-letter records.

Scores carry where they came from (a dedup key for consumers) and what computed them:
``rtml.source.topic``, ``rtml.source.partition``, ``rtml.source.offset``, ``rtml.graph.digest``,
``rtml.model.ids`` (comma separated) and ``rtml.schema.id`` (the input's writer schema id, when framed).

Dead-letter records keep the original key, value and headers, and add the reason after Kafka Connect's
``__connect.errors.*`` convention under our own prefix: ``rtml.errors.topic``, ``.partition``, ``.offset``,
``.stage``, ``.node.id``, ``.exception.class.name``, ``.exception.message``, ``.schema.id``, ``.model.id``.
A header whose value is unknown is left out. A dead letter too large for its topic keeps only the start of
its value and says so in ``rtml.errors.value.truncated`` (the original length in bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

from worker.errors import RecordError

Header = tuple[str, bytes]
ERRORS = "rtml.errors."


OFFSET = "rtml.source.offset"
DEPLOYMENT = "rtml.deployment"
TRUNCATED = ERRORS + "value.truncated"


def lineage_constants(
    graph_digest: str, model_ids: Sequence[str], deployment: str | None = None
) -> list[Header]:
    """The headers shared by every score of one graph: built once per graph, not per event.

    ``deployment`` (``<name>@<version>``) names the deployment's version the graph is, when it is one."""
    constants = [
        ("rtml.graph.digest", graph_digest.encode()),
        ("rtml.model.ids", ",".join(model_ids).encode()),
    ]
    return [*constants, (DEPLOYMENT, deployment.encode())] if deployment else constants


def source(topic: str, partition: int) -> tuple[Header, Header]:
    """The first two lineage headers, shared by every score of one input partition."""
    return (("rtml.source.topic", topic.encode()), ("rtml.source.partition", b"%d" % partition))


def lineage(source: tuple[Header, Header], offset: int, tail: Sequence[Header]) -> list[Header]:
    """The headers of one score: its partition's ``source`` pair, its offset, then the shared ``tail``."""
    return [*source, (OFFSET, b"%d" % offset), *tail]


def schema_id(raw_id: bytes) -> list[Header]:
    """The writer schema header from the 4 id bytes of the Confluent framing (none without framing)."""
    return [("rtml.schema.id", b"%d" % int.from_bytes(raw_id, "big"))] if raw_id else []


def dead_letter(error: RecordError, original: Sequence[Header] | None) -> list[Header]:
    """The envelope of one rejected record: its original headers, then the reason under ``rtml.errors.``."""
    fields = {
        "topic": error.topic,
        "partition": error.partition,
        "offset": error.offset,
        "stage": error.stage,
        "node.id": error.node_id,
        "exception.class.name": type(error.__cause__ or error).__qualname__,
        "exception.message": error.reason,
        "schema.id": error.schema_id,
        "model.id": error.model_id,
    }
    headers = [h for h in original or () if not h[0].startswith(ERRORS)]
    headers.extend(
        (ERRORS + name, str(value).encode()) for name, value in fields.items() if value is not None
    )
    return headers


def decode_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text, last one wins: for tests, the verifier and tools, never the hot path."""
    return {k: v.decode() for k, v in headers or () if v is not None}
