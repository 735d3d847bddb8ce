"""Poison records (1 %: wrong magic byte, unknown schema id, truncated body, NaN feature) in a real run.

Each must be dead-lettered exactly once with the original key and bytes and the error headers, its
neighbours scored exactly once, and the group's committed offsets must move past it, even when the last
record of every partition is poison.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from harness import POISON_KINDS, UNKNOWN_SCHEMA_ID, Planned, end_offsets, plan_events, poison_value, produce
from replicas import wait_committed
from scenario import Scenario
from verifier import Output

PARTITIONS = 6
REPLICAS = 2
EVENTS = 20_000
POISON_RATIO = 0.01
STAGES = {
    "bad_magic": "decode",
    "unknown_schema_id": "decode",
    "truncated": "decode",
    "nan_features": "graph",
}


def test_poison_is_dead_lettered_once_and_never_blocks(scenario: Callable[..., Scenario]) -> None:
    s = scenario(partitions=PARTITIONS, replicas=REPLICAS)
    planned = plan_events(s.graph, EVENTS, seed=31, schema_id=s.schema_id, poison_ratio=POISON_RATIO)
    header = b"\x00" + struct.pack(">I", s.schema_id)
    tails = [
        Planned(
            b"tail-%d" % p, poison_value("bad_magic", header, b"\x02\x00"), None, "bad_magic", partition=p
        )
        for p in range(PARTITIONS)
    ]
    s.fleet.start()
    sources = produce(s.bootstrap_servers, s.input_topic, [*planned, *tails])
    wait_committed(
        s.admin, s.group_id, s.input_topic, end_offsets(sources, PARTITIONS), s.fleet, timeout_s=180
    )
    codes = s.fleet.sigterm_all()
    assert set(codes.values()) == {0}, f"exit codes {codes}\n{s.fleet.logs()}"
    report, _, dead = s.collect(sources)

    poison = {(p, o): src for p, offsets in sources.items() for o, src in offsets.items() if src.poison}
    kinds = Counter(src.poison for src in poison.values())
    print(f"poison produced by kind: {dict(kinds)}")
    assert set(kinds) == set(POISON_KINDS)
    assert report.clean, report.render()  # neighbours scored once, right, in order; nothing lost or doubled
    located = {out.source()[1:]: out for out in dead if out.source() is not None}  # type: ignore[index]
    assert len(dead) == len(located) == len(poison), report.render()
    assert located.keys() == poison.keys()
    for where, out in located.items():
        source = poison[where]
        assert (out.key, out.value) == (source.key, source.value)
        assert out.header("rtml.errors.topic") == s.input_topic
    wrong_headers = [
        f"{poison[where].poison} at {where}: {problem}; headers {dict(out.headers)}"
        for where, out in located.items()
        if (problem := header_problem(poison[where].poison or "", out, s))
    ]
    assert not wrong_headers, f"{len(wrong_headers)} dead-letter records with wrong headers:\n" + "\n".join(
        wrong_headers[:8]
    )


def header_problem(kind: str, out: Output, s: Scenario) -> str | None:
    """What is wrong with the error headers of the dead-letter record of poison ``kind``, if anything."""
    if out.header("rtml.errors.stage") != STAGES[kind]:
        return f"stage {out.header('rtml.errors.stage')}, expected {STAGES[kind]}"
    if not out.header("rtml.errors.exception.class.name") or not out.header("rtml.errors.exception.message"):
        return "no exception class name or message"
    schema_id = out.header("rtml.errors.schema.id")
    if kind == "nan_features":
        if out.header("rtml.errors.node.id") != "model":
            return f"node id {out.header('rtml.errors.node.id')}, expected model"
        if out.header("rtml.errors.model.id") not in s.graph.model_ids:
            return f"model id {out.header('rtml.errors.model.id')}, expected one of {s.graph.model_ids}"
        if schema_id != str(s.schema_id):  # decoded with that writer schema: the id is known
            return f"schema id {schema_id}, expected {s.schema_id}"
    if kind == "truncated" and schema_id not in (None, str(s.schema_id)):
        return f"schema id {schema_id}, expected {s.schema_id} or none"
    if kind == "unknown_schema_id" and schema_id not in (None, str(UNKNOWN_SCHEMA_ID)):
        return f"schema id {schema_id}, expected {UNKNOWN_SCHEMA_ID} or none"
    if kind == "bad_magic" and schema_id is not None:  # not framed: no schema id to speak of
        return f"schema id {schema_id} on a record without framing"
    return None
