"""The streaming verifier's counting on synthetic records: each kind of fault is detected, and only it.

A verifier that cannot fail proves nothing: every test starts from a perfect answer (which must verify clean)
and breaks it in one way. The verifier lives with the runtime tests (tests/integration/runtime/verifier.py).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "runtime"))

from harness import Planned, locate, reconcile
from verifier import Output, Report, Source, verify

TOPIC = "in"
PARTITIONS = 3
PER_PARTITION = 5


def expected(p: int, o: int) -> dict[str, Any]:
    return {"ecid": f"e{p}-{o}", "score": 0.125 * o + p / 10, "label": o % 2, "timestamp": 1000 + o}


def make_sources(dead: frozenset[tuple[int, int]] = frozenset()) -> dict[int, dict[int, Source]]:
    return {
        p: {
            o: Source(
                key=f"k{p}-{o}".encode(),
                value=f"v{p}-{o}".encode(),
                expected=None if (p, o) in dead else expected(p, o),
                poison="bad_magic" if (p, o) in dead else None,
            )
            for o in range(10, 10 + PER_PARTITION)
        }
        for p in range(PARTITIONS)
    }


def score(p: int, o: int, *, out_partition: int | None = None, **changes: Any) -> Output:
    headers = {
        "rtml.source.topic": TOPIC.encode(),
        "rtml.source.partition": str(p).encode(),
        "rtml.source.offset": str(o).encode(),
        "rtml.graph.digest": b"d1",
        "rtml.model.ids": b"sha256:ab",
        "rtml.schema.id": b"7",
    }
    return Output(
        kind="score",
        partition=p if out_partition is None else out_partition,
        offset=0,
        key=f"k{p}-{o}".encode(),
        value=b"\x00",
        headers=headers,
        fields={**expected(p, o), **changes},
    )


def dead_letter(p: int, o: int, *, value: bytes | None = None) -> Output:
    headers = {
        "rtml.errors.topic": TOPIC.encode(),
        "rtml.errors.partition": str(p).encode(),
        "rtml.errors.offset": str(o).encode(),
        "rtml.errors.stage": b"decode",
        "rtml.errors.exception.class.name": b"DecodeError",
        "rtml.errors.exception.message": b"bad magic byte",
    }
    original = f"v{p}-{o}".encode() if value is None else value
    return Output("dead_letter", 0, 0, f"k{p}-{o}".encode(), original, headers)


def perfect(sources: dict[int, dict[int, Source]]) -> tuple[list[Output], list[Output]]:
    scores = [score(p, o) for p in sources for o, s in sources[p].items() if s.expected is not None]
    dead = [dead_letter(p, o) for p in sources for o, s in sources[p].items() if s.expected is None]
    return scores, dead


def run(sources: dict[int, dict[int, Source]], scores: list[Output], dead: list[Output]) -> Report:
    report = verify(sources, scores, dead, input_topic=TOPIC, score_partitions=PARTITIONS, graph_digest="d1")
    print(report.render())
    return report


def only(report: Report, *, unknown: int = 0, **counts: int) -> None:
    """``report`` has exactly ``counts`` (and ``unknown``) and zero for every other fault."""
    faults = {"lost": 0, "duplicated": 0, "wrong": 0, "out_of_order": 0, "misrouted": 0}
    faults.update(counts)
    got = {name: report.total(name) for name in faults}
    assert got == faults, report.render()
    assert report.unknown == unknown
    assert report.clean is (sum(faults.values()) + unknown == 0)


def test_perfect_answer_is_clean_and_counts_inputs() -> None:
    sources = make_sources(frozenset({(1, 12)}))
    scores, dead = perfect(sources)
    report = run(sources, scores, dead)
    only(report)
    assert report.total("inputs") == PARTITIONS * PER_PARTITION
    assert report.total("scored") == PARTITIONS * PER_PARTITION - 1
    assert report.total("dead_lettered") == 1


@pytest.mark.parametrize("missing", [(0, 10), (2, 14)])
def test_a_missing_score_is_lost(missing: tuple[int, int]) -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    scores = [s for s in scores if s.source() != (TOPIC, *missing)]
    report = run(sources, scores, dead)
    only(report, lost=1)
    assert report.partitions[missing[0]].lost == 1
    assert f"lost {missing[0]}:{missing[1]}" in report.samples


def test_a_missing_dead_letter_is_lost() -> None:
    sources = make_sources(frozenset({(1, 12)}))
    scores, _ = perfect(sources)
    only(run(sources, scores, []), lost=1)


def test_a_repeated_score_is_a_duplicate_and_does_not_break_order() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    # A replay after a crash: offsets 11..12 of partition 0 again, after 13.
    replay = [score(0, 11), score(0, 12)]
    at = next(i for i, s in enumerate(scores) if s.source() == (TOPIC, 0, 13)) + 1
    report = run(sources, [*scores[:at], *replay, *scores[at:]], dead)
    only(report, duplicated=2)
    assert report.partitions[0].scored == PER_PARTITION + 2


def test_a_score_and_a_dead_letter_for_one_offset_is_a_duplicate_and_wrong() -> None:
    sources = make_sources()
    scores, _ = perfect(sources)
    only(run(sources, scores, [dead_letter(2, 13)]), duplicated=1, wrong=1)


@pytest.mark.parametrize(
    "change",
    [
        {"score": expected(1, 11)["score"] + 2e-6},
        {"label": 1 - expected(1, 11)["label"]},
        {"ecid": "someone-else"},
        {"timestamp": 1},
    ],
)
def test_a_score_that_differs_from_the_offline_score_is_wrong(change: dict[str, Any]) -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    scores = [score(1, 11, **change) if s.source() == (TOPIC, 1, 11) else s for s in scores]
    only(run(sources, scores, dead), wrong=1)


def test_a_score_within_the_tolerance_is_right() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    scores = [score(1, 11, score=expected(1, 11)["score"] + 5e-7) if s.source() == (TOPIC, 1, 11) else s
              for s in scores]  # fmt: skip
    only(run(sources, scores, dead))


def test_scoring_a_poison_record_or_dead_lettering_a_good_one_is_wrong() -> None:
    sources = make_sources(frozenset({(0, 10)}))
    scores, _ = perfect(sources)
    swapped_scores = [score(0, 10), *scores]
    only(run(sources, swapped_scores, []), wrong=1)
    good_dead = [s for s in scores if s.source() != (TOPIC, 2, 12)]
    only(run(sources, good_dead, [dead_letter(0, 10), dead_letter(2, 12)]), wrong=1)


def test_a_dead_letter_without_the_original_bytes_or_headers_is_wrong() -> None:
    sources = make_sources(frozenset({(0, 10)}))
    scores, _ = perfect(sources)
    only(run(sources, scores, [dead_letter(0, 10, value=b"changed")]), wrong=1)
    bare = dead_letter(0, 10)
    stripped = Output(bare.kind, 0, 0, bare.key, bare.value,
                      {k: v for k, v in bare.headers.items() if k != "rtml.errors.stage"})  # fmt: skip
    only(run(sources, scores, [stripped]), wrong=1)


def test_a_truncated_dead_letter_is_right_only_when_it_says_so_truthfully() -> None:
    sources = make_sources(frozenset({(0, 10)}))
    scores, _ = perfect(sources)
    original = sources[0][10].value
    cut = dead_letter(0, 10, value=original[:2])

    def truncated(output: Output, length: int) -> Output:
        headers = {**output.headers, "rtml.errors.value.truncated": str(length).encode()}
        return Output(output.kind, 0, 0, output.key, output.value, headers)

    only(run(sources, scores, [truncated(cut, len(original))]))
    only(run(sources, scores, [cut]), wrong=1)  # cut without saying so
    only(run(sources, scores, [truncated(cut, len(original) + 1)]), wrong=1)  # a false original length
    only(run(sources, scores, [truncated(dead_letter(0, 10, value=b"xx"), len(original))]), wrong=1)


def test_a_score_with_another_key_digest_or_no_lineage_header_is_wrong() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    good = scores[0]
    other_key = Output("score", good.partition, 0, b"nope", good.value, good.headers, good.fields)
    other_digest = Output("score", good.partition, 0, good.key, good.value,
                          {**good.headers, "rtml.graph.digest": b"d2"}, good.fields)  # fmt: skip
    without = {k: v for k, v in good.headers.items() if k != "rtml.model.ids"}
    no_models = Output("score", good.partition, 0, good.key, good.value, without, good.fields)
    undecodable = Output("score", good.partition, 0, good.key, good.value, good.headers, None)
    for broken in (other_key, other_digest, no_models, undecodable):
        only(run(sources, [broken, *scores[1:]], dead), wrong=1)


def test_reordered_scores_are_out_of_order() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    i = next(i for i, s in enumerate(scores) if s.source() == (TOPIC, 2, 11))
    scores[i], scores[i + 1] = scores[i + 1], scores[i]
    report = run(sources, scores, dead)
    only(report, out_of_order=1)
    assert report.partitions[2].out_of_order == 1


def test_order_is_judged_per_source_partition_within_an_output_partition() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    interleaved = sorted(scores, key=lambda s: (s.source() or ("", 0, 0))[2])  # partitions interleave
    only(run(sources, interleaved, dead))


def test_a_score_in_the_wrong_output_partition_is_misrouted() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    scores = [score(1, 13, out_partition=2) if s.source() == (TOPIC, 1, 13) else s for s in scores]
    only(run(sources, scores, dead), misrouted=1)


def test_outputs_naming_no_produced_input_are_unknown() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    stray = [score(0, 99), score(5, 10)]
    foreign = Output("score", 0, 0, b"k0-10", b"", {**scores[0].headers, "rtml.source.topic": b"other"})
    report = run(sources, [*scores, *stray, foreign], dead)
    only(report, unknown=3)


def test_render_shows_every_partition_and_the_totals() -> None:
    sources = make_sources()
    scores, dead = perfect(sources)
    text = run(sources, scores[1:], dead).render()
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["partition", "inputs", "scored", "dead_lettered", "lost"]
    assert lines[PARTITIONS + 1].split()[:5] == ["total", "15", "14", "0", "1"]
    assert "lost 0:10" in text


# --- the harness's placement of records acknowledged without an offset ------------------------------------


def test_records_acknowledged_without_an_offset_are_placed_by_key_and_value() -> None:
    log = [(0, b"k1", b"v"), (1, b"k2", b"v"), (2, b"k1", b"v"), (3, b"k3", b"w")]
    placed = {0: Source(b"k1", b"v", None)}  # offset 0 was acknowledged with its offset
    twice = [Planned(b"k1", b"v", {"s": 1}), Planned(b"k3", b"w", None)]
    found = locate(twice, log, placed)
    assert sorted(found) == [2, 3]
    assert found[2].expected == {"s": 1}
    with pytest.raises(RuntimeError, match="not in the log"):
        locate([Planned(b"k9", b"v", None)], log, placed)


# --- the input log as ground truth -------------------------------------------------------------------------


def logs_of(sources: dict[int, dict[int, Source]]) -> dict[int, list[tuple[int, bytes | None, bytes]]]:
    return {p: [(o, s.key, s.value) for o, s in sorted(placed.items())] for p, placed in sources.items()}


def test_a_record_the_producer_wrote_twice_is_an_input_the_worker_must_answer() -> None:
    sources = make_sources()
    logs = logs_of(sources)
    logs[0].append((15, b"k0-11", b"v0-11"))  # 0@11 written twice; no delivery report named offset 15
    truth, copies = reconcile(sources, logs)
    assert copies == 1
    assert truth[0][15] == sources[0][11]
    scores, dead = perfect(sources)
    answer = score(0, 11)
    copy = replace(answer, headers={**answer.headers, "rtml.source.offset": b"15"})
    only(run(sources, [*scores, copy], dead), unknown=1)  # judged by the reports alone: an unknown output
    only(run(truth, [*scores, copy], dead))
    only(run(truth, scores, dead), lost=1)  # the copy left unanswered is lost


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda log: log.pop(2), "missing from the log"),
        (lambda log: log.append((15, b"k9", b"v9")), "no producer of the run sent"),
        (lambda log: log.__setitem__(0, (10, b"k0-10", b"other")), "another record"),
    ],
    ids=["missing", "foreign", "changed"],
)
def test_a_log_that_disagrees_with_the_delivery_reports_fails_loudly(change: Any, message: str) -> None:
    sources = make_sources()
    logs = logs_of(sources)
    change(logs[0])
    with pytest.raises(RuntimeError, match=message):
        reconcile(sources, logs)
