"""CommitTracker and InFlight: commit points advance only over batches whose outputs are all acknowledged,
in consume order; a delivery error stops them and the rewind gives up everything from the failed batch on;
revoked partitions are forgotten."""

from __future__ import annotations

from collections import defaultdict

import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.runtime.tracker import IMPLICIT_ACK, CommitTracker, InFlight, TopicPartition

A0: TopicPartition = ("in", 0)
A1: TopicPartition = ("in", 1)
TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)
TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


ALL = [A0, A1, ("side", 0), ("in", 2)]


def ack(batch: InFlight, n: int = 1, error: KafkaError | None = None) -> None:
    for _ in range(n):
        offset = 0 if error is None else -1001  # librdkafka's RD_KAFKA_OFFSET_INVALID with an error
        batch.on_delivery(error, Message(topic="out", partition=0, offset=offset, key=b"k", value=b"v"))


def tracked(
    tracker: CommitTracker,
    next_offsets: dict[TopicPartition, int],
    outputs: int,
    first_offsets: dict[TopicPartition, int] | None = None,
) -> InFlight:
    batch = InFlight(dict(next_offsets), dict(first_offsets or {}), outstanding=outputs)
    tracker.track(batch)
    return batch


def advance(tracker: CommitTracker) -> dict[TopicPartition, int]:
    """The points newly reached, confirmed at once (as a commit the broker took)."""
    points = tracker.to_commit(ALL)
    for tp, offset in points.items():
        tracker.confirm(tp, offset)
    return points


def test_a_report_without_error_or_offset_is_a_failure_and_rewinds() -> None:
    """librdkafka's implicit ack of a batch a recreated topic never wrote: no error, no offset."""
    tracker = CommitTracker()
    batch = tracked(tracker, {A0: 10}, outputs=2, first_offsets={A0: 5})
    ack(batch)
    batch.on_delivery(None, Message(topic="out", partition=0, offset=-1001, key=b"k", value=b"v"))
    assert batch.done
    assert tracker.failing()
    assert [f.error for f in tracker.failures()] == [IMPLICIT_ACK]
    assert tracker.failures()[0].key == b"k"
    assert advance(tracker) == {}  # never committed past
    assert tracker.rewind()[0] == {A0: 5}


def test_a_completed_batch_moves_its_partitions_and_leaves_the_tracker() -> None:
    tracker = CommitTracker()
    batch = tracked(tracker, {A0: 10, A1: 4}, outputs=3)
    ack(batch, 2)
    assert not batch.done
    assert advance(tracker) == {}
    ack(batch)
    assert batch.done
    assert advance(tracker) == {A0: 10, A1: 4}
    assert tracker.empty
    assert advance(tracker) == {}  # popped: nothing to commit twice


def test_an_incomplete_earlier_batch_holds_back_later_ones() -> None:
    tracker = CommitTracker()
    first = tracked(tracker, {A0: 10}, outputs=2)
    second = tracked(tracker, {A0: 20, A1: 5}, outputs=1)
    ack(second)
    assert second.done and not first.done
    assert advance(tracker) == {}  # A1 is held back too: the order of batches is the order of commits
    ack(first)
    ack(first)
    assert advance(tracker) == {A0: 20, A1: 5}  # the later batch's point wins
    assert tracker.empty


def test_advance_stops_at_the_first_incomplete_batch() -> None:
    tracker = CommitTracker()
    first = tracked(tracker, {A0: 10}, outputs=1)
    second = tracked(tracker, {A0: 20}, outputs=1)
    third = tracked(tracker, {A0: 30, A1: 3}, outputs=1)
    ack(first)
    ack(third)
    assert advance(tracker) == {A0: 10}
    assert not tracker.empty
    ack(second)
    assert advance(tracker) == {A0: 30, A1: 3}


def test_a_batch_without_outputs_is_done_at_once() -> None:
    tracker = CommitTracker()
    tracked(tracker, {A0: 7}, outputs=0)
    assert advance(tracker) == {A0: 7}


def test_outstanding_counts_unacknowledged_outputs_over_all_batches() -> None:
    tracker = CommitTracker()
    assert tracker.outstanding == 0 and tracker.empty
    first = tracked(tracker, {A0: 10}, outputs=3)
    second = tracked(tracker, {A1: 10}, outputs=4)
    assert tracker.outstanding == 7
    ack(first, 3)
    ack(second)
    assert tracker.outstanding == 3
    advance(tracker)
    assert tracker.outstanding == 3 and not tracker.empty
    ack(second, 3)
    assert tracker.outstanding == 0


def test_a_delivery_error_stops_advancing_and_is_reported() -> None:
    tracker = CommitTracker()
    first = tracked(tracker, {A0: 10}, outputs=2)
    second = tracked(tracker, {A0: 20}, outputs=1)
    assert not tracker.failing()
    ack(first)
    ack(first, error=TIMED_OUT)
    ack(second)
    assert first.done  # every callback came, one of them with an error
    assert tracker.failing() and [f.error for f in tracker.failures()] == [TIMED_OUT]
    assert advance(tracker) == {}  # neither the failed batch nor anything after it
    assert tracker.failing()


def test_every_failure_is_kept_in_batch_order_with_what_its_report_carried() -> None:
    tracker = CommitTracker()
    ok = tracked(tracker, {A0: 5}, outputs=1)
    first = tracked(tracker, {A0: 10}, outputs=2)
    second = tracked(tracker, {A0: 20}, outputs=1)
    ack(second, error=TOO_LARGE)
    ack(first, error=TIMED_OUT)
    ack(first, error=TOO_LARGE)
    ack(ok)
    assert [f.error for f in first.failures] == [TIMED_OUT, TOO_LARGE]
    assert [f.error for f in tracker.failures()] == [TIMED_OUT, TOO_LARGE, TOO_LARGE]  # consume order
    assert {(f.topic, f.key, f.value) for f in tracker.failures()} == {("out", b"k", b"v")}
    assert tracker.to_commit([A0]) == {A0: 5}  # the completed batch before the failure still commits


def test_rewind_gives_up_the_failed_batch_and_every_later_one() -> None:
    tracker = CommitTracker()
    delivered = tracked(tracker, {A0: 10}, outputs=1, first_offsets={A0: 0})
    failed = tracked(tracker, {A0: 20, A1: 7}, outputs=2, first_offsets={A0: 10, A1: 3})
    later = tracked(tracker, {A0: 30, A1: 9}, outputs=1, first_offsets={A0: 20, A1: 7})
    ack(delivered)
    ack(failed)
    ack(failed, error=TIMED_OUT)
    ack(later)
    points, failures, by_batch = tracker.rewind()
    assert points == {A0: 10, A1: 3}  # each partition's first offset in what was given up
    assert [f.error for f in failures] == [TIMED_OUT]
    assert [fails for _, fails in by_batch] == [failures]
    assert tracker.empty and not tracker.failing()
    assert tracker.to_commit([A0, A1]) == {A0: 10}  # what was delivered before the failure still commits


def test_forget_drops_revoked_partitions_from_every_batch() -> None:
    tracker = CommitTracker()
    first = tracked(tracker, {A0: 10, A1: 3}, outputs=1, first_offsets={A0: 5, A1: 1})
    second = tracked(tracker, {A1: 8}, outputs=1, first_offsets={A1: 3})
    tracker.forget([A1, ("other", 0)])
    assert first.next_offsets == {A0: 10} and second.next_offsets == {}
    assert first.first_offsets == {A0: 5} and second.first_offsets == {}
    ack(first)
    ack(second)
    assert advance(tracker) == {A0: 10}  # nothing of A1: it is no longer ours to commit
    assert tracker.empty


# --- property: never skip an unacknowledged message ------------------------------------------------------

PARTITIONS: list[TopicPartition] = [("in", 0), ("in", 1), ("in", 2), ("side", 0)]
Consumed = tuple[TopicPartition, int]  # a message: its partition and offset
Step = tuple[str, int, int]  # ("track", batch, 0) or ("ack", batch, output)


def commit_points(batch: list[Consumed]) -> dict[TopicPartition, int]:
    """What the loop hands the tracker: per partition, one past the batch's last offset of it."""
    return {tp: offset + 1 for tp, offset in batch}


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[list[Consumed]], list[Step]]:
    """Batches of messages over a few partitions (offsets rising with gaps), and an interleaving of
    "track the next batch" and "acknowledge output k of batch b" steps, acknowledgements in random order."""
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=8))
    offsets = {tp: draw(st.integers(0, 100)) for tp in PARTITIONS}
    batches: list[list[Consumed]] = []
    for size in sizes:
        batch: list[Consumed] = []
        for _ in range(size):
            tp = draw(st.sampled_from(PARTITIONS))
            offsets[tp] += draw(st.integers(1, 3))
            batch.append((tp, offsets[tp]))
        batches.append(batch)
    steps: list[Step] = []
    tracked_n, unacked = 0, list[tuple[int, int]]()  # (batch, output) tracked but not acknowledged
    while tracked_n < len(batches) or unacked:
        if tracked_n < len(batches) and (not unacked or draw(st.booleans())):
            steps.append(("track", tracked_n, 0))
            unacked.extend((tracked_n, k) for k in range(len(batches[tracked_n])))
            tracked_n += 1
        else:
            b, k = unacked.pop(draw(st.integers(0, len(unacked) - 1)))
            steps.append(("ack", b, k))
    return batches, steps


@settings(max_examples=300, deadline=None)
@given(schedules())
def test_commit_points_never_pass_an_unacknowledged_message(
    schedule: tuple[list[list[Consumed]], list[Step]],
) -> None:
    batches, steps = schedule
    tracker = CommitTracker()
    in_flight: list[InFlight] = []
    unacked: dict[TopicPartition, set[int]] = defaultdict(set)  # offsets whose output is in flight
    committed: dict[TopicPartition, int] = {}
    for step, b, k in steps:
        if step == "track":
            in_flight.append(
                InFlight(commit_points(batches[b]), outstanding=len(batches[b]))
            )  # 1 output each
            tracker.track(in_flight[-1])
            for tp, offset in batches[b]:
                unacked[tp].add(offset)
        else:
            tp, offset = batches[b][k]
            unacked[tp].remove(offset)
            ack(in_flight[b])
        for tp, point in advance(tracker).items():
            assert point >= committed.get(tp, 0), "a commit point went backwards"
            committed[tp] = point
            if unacked[tp]:
                assert point <= min(unacked[tp]), f"{tp} committed past an unacknowledged offset"
    assert tracker.empty and tracker.outstanding == 0 and not tracker.failing()
    last = {tp: offset for batch in batches for tp, offset in batch}
    assert committed == {tp: offset + 1 for tp, offset in last.items()}


@pytest.mark.parametrize("failing_batch", [0, 1, 2])
def test_nothing_at_or_after_a_failed_batch_is_ever_committed(failing_batch: int) -> None:
    tracker = CommitTracker()
    batches = [tracked(tracker, {A0: 10 * (i + 1)}, outputs=2) for i in range(3)]
    for i, batch in enumerate(batches):
        ack(batch, error=TIMED_OUT if i == failing_batch else None)
        ack(batch)
    points = advance(tracker)
    assert points == ({A0: 10 * failing_batch} if failing_batch else {})
    assert [f.error for f in tracker.failures()] == [TIMED_OUT]


def test_a_point_is_offered_until_the_broker_confirms_it() -> None:
    tracker = CommitTracker()
    batch = InFlight({("t", 0): 10, ("t", 1): 5}, outstanding=1)
    tracker.track(batch)
    assert tracker.to_commit({("t", 0), ("t", 1)}) == {}  # nothing delivered yet
    ack(batch)
    assert tracker.to_commit({("t", 0), ("t", 1)}) == {("t", 0): 10, ("t", 1): 5}
    # the commit of partition 1 was lost in a rebalance: only partition 0 is confirmed
    tracker.confirm(("t", 0), 10)
    assert tracker.to_commit({("t", 0), ("t", 1)}) == {("t", 1): 5}
    assert tracker.to_commit({("t", 0)}) == {}  # partitions not asked for are left alone
    tracker.forget({("t", 1)})
    assert tracker.to_commit({("t", 0), ("t", 1)}) == {}


def test_waiting_since_is_when_the_oldest_batch_still_awaiting_acks_was_produced() -> None:
    tracker = CommitTracker()
    assert tracker.waiting_since() is None
    first = tracked(tracker, {A0: 10}, outputs=2)
    second = tracked(tracker, {A1: 4}, outputs=1)
    ack(second)  # a later batch done (a dead letter going out) does not make the first younger
    assert tracker.waiting_since() == first.since
    ack(first, 2)
    assert tracker.waiting_since() is None
