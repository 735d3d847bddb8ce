"""The loop's ordering under faults, over the in-memory broker (held to the real one by tests/contract).

Each test drives one fault the delivery path must survive and checks its outcome from outside the worker:
what the broker holds, what the group committed, the worker's health and exit code. Each runs twice: with the
worker, and with a worker that has that one fault put back (``broken_workers``), which must fail the same
checks (strict xfail), so that a check which cannot fail is noticed.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import broken_workers as broken
import loop_world
import pytest
from confluent_kafka import KafkaError, TopicPartition
from loop_world import FlakyRegistry, World, kafka_error, running, wait_until

from worker.runtime import delivery, flow
from worker.runtime.inmemory import InMemoryConsumer
from worker.runtime.loop import Worker


def controls(broken_type: type[Worker]) -> pytest.MarkDecorator:
    """Run the test with the worker, and with ``broken_type``, which must fail it."""
    negative = pytest.mark.xfail(raises=AssertionError, strict=True, reason="negative control")
    return pytest.mark.parametrize(
        "worker_type",
        [Worker, pytest.param(broken_type, marks=negative)],
        ids=["worker", broken_type.__name__],
    )


@pytest.fixture(autouse=True)
def _quick_negative_controls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("worker_type", Worker) is not Worker:
        monkeypatch.setattr(loop_world, "TIMEOUT_S", 4.0)  # a broken worker fails at its first wait


def other_member(world: World) -> tuple[InMemoryConsumer, list[TopicPartition]]:
    """A second member of the worker's group, made by the test; what it was assigned so far."""
    assigned: list[TopicPartition] = []
    other = world.broker.clients().consumer({"group.id": "g", "auto.offset.reset": "earliest"})
    other.subscribe(["in"], on_assign=lambda _c, parts: assigned.extend(parts))
    return other, assigned


def first_seen_in_order(world: World) -> bool:
    """Per score partition, the first score of each event comes in the order the events were written."""
    seen: dict[int, list[int]] = {}
    for partition, event_id, _ in world.scores():
        number = int(event_id[1:])
        if number not in seen.setdefault(partition, []):
            seen[partition].append(number)
    return all(numbers == sorted(numbers) for numbers in seen.values())


# --- the delivery path ------------------------------------------------------------------------------------


@controls(broken.ReportsOnLast)
def test_a_timed_out_output_is_never_committed_past_and_is_produced_again(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        world.broker.fail_deliveries("scores", kafka_error(KafkaError._MSG_TIMED_OUT), count=1)
        ids = world.produce(200)
        wait_until(lambda: world.committed().get(0) == 200, "the commit to reach the end")
        wait_until(lambda: set(ids) <= set(world.answered()), "every event to be answered")
    assert world.exit_code == 0
    # Later scores of the batch went out while the first timed out (a gap): the rewind sends them again.
    assert max(world.answered().values()) <= 2


@controls(broken.CommitsPastFailures)
def test_the_commit_never_passes_an_output_that_failed(tmp_path: Path, worker_type: type[Worker]) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        world.broker.hold("scores")
        world.produce(50)
        wait_until(lambda: len(world.broker.producers[-1]) == 50, "the scores to be in flight")
        world.broker.expire_held()
        world.broker.release()
        samples = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and len(world.answered()) < 50:
            samples.append((world.committed().get(0, 0), len(world.answered())))
            time.sleep(0.005)
        wait_until(lambda: len(world.answered()) == 50, "every event answered after the timeout")
    answered_then = [(c, a) for c, a in samples if c > a]
    assert not answered_then, f"committed past what was answered: {answered_then[:3]}"


@controls(broken.WatchesAnyAcknowledgement)
def test_scores_stuck_while_dead_letters_go_out_make_the_worker_not_ready(
    tmp_path: Path, worker_type: type[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The score topic takes nothing (a deleted topic librdkafka waits for), the dead-letter topic takes
    each bad record: acknowledgements keep coming, but the oldest outputs wait, so the worker is not ready."""
    monkeypatch.setattr(flow, "OUTPUT_STALL_S", 1.0)
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        world.broker.hold("scores")
        world.produce(5)
        dead = 0
        for _ in range(12):  # a dead letter acknowledged every 0.25 s, for 3 s, each a while after it went
            world.broker.hold("dlq")
            world.produce(1, bad=lambda _i: True)
            time.sleep(0.125)
            world.broker.release("dlq")
            time.sleep(0.125)
            dead = len(world.dead_letters())
        ready, reason = world.health.readiness()
        assert dead >= 10 and not ready and "waiting on the broker" in reason, (dead, reason)
        world.broker.release("scores")
        wait_until(lambda: world.health.readiness()[0], "ready again once the scores go out")
    assert world.exit_code == 0


@controls(broken.TrustsImplicitAcks)
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_an_output_reported_delivered_without_an_offset_is_produced_again(
    tmp_path: Path, worker_type: type[Worker], mode: str
) -> None:
    """librdkafka reports a batch a recreated topic refused as delivered, with no offset, once the next
    batch is taken (an implicit ack): it was never written, so it must be produced again, not committed."""
    world = World(tmp_path, partitions=1, delivery=mode)
    with running(world, worker_type):
        world.broker.ack_unwritten("scores", count=3)
        ids = world.produce(100)
        wait_until(lambda: world.committed().get(0) == 100, "the commit to reach the end")
        wait_until(lambda: set(ids) <= set(world.answered()), "every event to be answered")
    assert world.exit_code == 0
    assert max(world.answered().values()) <= (2 if mode == "at-least-once" else 1)
    # The producer's sequence numbers no longer match the broker's: a new one took over.
    assert 1 <= renewals(world, "implicit_ack") == len(world.broker.producers) - 1


@controls(broken.NeverIsolates)
def test_a_score_the_broker_rejects_is_dead_lettered_with_its_reason(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        error = kafka_error(KafkaError.MSG_SIZE_TOO_LARGE)
        world.broker.fail_deliveries("scores", error, count=1000, key=b"e5")  # refused whenever it comes
        with world.broker.lock:  # one batch: the refused score has neighbours on both sides
            ids = world.produce(20)
        wait_until(lambda: world.committed().get(0) == 20, "the commit to reach the end")
        wait_until(lambda: set(ids) <= set(world.answered()), "every event to be answered")
    assert world.exit_code == 0
    dead = world.dead_letters()
    assert [d["key"] for d in dead] == ["e5"]
    assert dead[0]["rtml.errors.stage"] == "produce"
    assert "MSG_SIZE_TOO_LARGE" in dead[0]["rtml.errors.exception.message"]
    assert {event_id for _, event_id, _ in world.scores()} == set(ids) - {"e5"}
    assert first_seen_in_order(world)


@controls(broken.NeverTruncates)
def test_a_dead_letter_too_large_for_the_producer_is_truncated_not_fatal(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        big = b"\xff" * 1_040_000  # under the input limit of 1 MiB, over librdkafka's message.max.bytes
        world.broker.produce("in", big, b"big", partition=0)
        ids = world.produce(5)
        wait_until(lambda: world.committed().get(0) == 6, "the commit to reach the end")
    assert world.exit_code == 0
    dead = world.broker.visible("dlq")
    assert len(dead) == 1
    record = dead[0][2]
    headers = dict(record.headers or [])
    assert record.key == b"big" and headers["rtml.errors.value.truncated"] == b"1040000"
    kept = record.value or b""
    assert 900_000 < len(kept) < 1_000_000 and big.startswith(kept)  # as much as fits, cut at produce
    assert headers["rtml.errors.offset"] == b"0"  # the original stays addressable
    assert {event_id for _, event_id, _ in world.scores()} == set(ids)


@controls(broken.CommitsPastFailures)
def test_a_deleted_dead_letter_topic_holds_the_partition_not_ready_and_loses_nothing(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type):
        ids = world.produce(5)
        wait_until(lambda: world.committed().get(0) == 5, "the first commit")
        world.broker.delete_topic("dlq")
        ids += world.produce(5, bad=lambda i: i == 2)
        wait_until(lambda: not world.health.readiness()[0], "not ready while the dead letters fail")
        assert "dlq" in world.health.readiness()[1]
        time.sleep(0.3)
        assert world.committed().get(0) == 5, "nothing past the failing dead letter may be committed"
        world.broker.create_topic("dlq", 1)
        wait_until(lambda: world.committed().get(0) == 10, "the commit to reach the end", timeout_s=45)
        wait_until(lambda: world.health.readiness()[0], "ready again")
    assert world.exit_code == 0
    assert set(ids) <= set(world.answered())


# --- waiting without stalling the group -------------------------------------------------------------------


@controls(broken.SleepsThroughRegistryOutages)
def test_a_registry_outage_keeps_the_consumer_polled_and_serves_a_revoke(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    registry = FlakyRegistry()
    registry.up = False
    world = World(tmp_path, partitions=2, registry=registry)
    with running(world, worker_type):
        ids = world.produce(5, partition=0) + world.produce(5, partition=1)
        wait_until(lambda: "registry" in world.health.readiness()[1], "not ready while the registry is down")
        other, assigned = other_member(world)
        wait_until(lambda: other.poll(0.01) is None and bool(assigned), "the worker to serve the revoke", 5)
        other.close()
        registry.up = True
        wait_until(lambda: set(ids) <= set(world.answered()), "every event answered once the registry is up")
    assert world.exit_code == 0
    assert world.dead_letters() == []


@controls(broken.DrainsWhateverWaits)
def test_sigterm_during_a_registry_outage_exits_0_after_committing_what_was_delivered(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    registry = FlakyRegistry()
    world = World(tmp_path, partitions=1, registry=registry, commit_interval_ms=600_000)
    with running(world, worker_type):
        ids = world.produce(10)
        wait_until(lambda: set(ids) <= set(world.answered()), "the first events delivered")
        registry.up = False
        registry_calls = registry.calls
        world.produce(5, schema_id=8)  # a writer schema the worker has not seen yet
        wait_until(lambda: registry.calls > registry_calls, "the worker waiting on the registry")
        assert world.stop() == 0
    assert world.committed() == {0: 10}
    assert world.dead_letters() == []


@controls(broken.GivesUpARefusedLastCommit)
def test_a_last_commit_refused_across_a_rebalance_is_sent_again_before_leaving(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    """SIGTERM while the group moves to a new generation (a replica joining in a rolling restart): the
    drain's commit is refused (ILLEGAL_GENERATION) and so is the revoke's in ``close``; the worker must poll
    its way into the new generation and commit again, or the next owner answers all it delivered again."""
    world = World(tmp_path, partitions=1, commit_interval_ms=600_000)  # the drain's commit is the only one
    with running(world, worker_type):
        world.broker.hold("scores")
        world.produce(10)
        wait_until(lambda: len(world.broker.producers[-1]) == 10, "the scores to be in flight")
        assert world.worker is not None
        world.worker.stop()
        time.sleep(0.5)  # the loop ends its turn (a turn blocks 0.1 s at most) and drains, on held outputs
        other, _ = other_member(world)  # a new generation the draining worker has not polled its way into
        assert world.stop() == 0
    assert world.committed() == {0: 10}
    other.close()


@controls(broken.SpinsOnFullQueue)
def test_a_full_producer_queue_keeps_the_loop_turning_with_partitions_paused(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1, stall_after_s=1.0,
                  kafka={"producer_extra": {"queue.buffering.max.messages": "50"}})  # fmt: skip
    with running(world, worker_type):
        world.broker.hold("scores")
        ids = world.produce(300)
        producer = world.broker.producers[-1]
        wait_until(lambda: len(producer) >= 50, "the producer's queue to fill")
        time.sleep(1.5)
        assert world.health.liveness() == (True, "ok")
        consumer = world.broker.clients().consumers  # the worker's consumer is the broker's only member
        member = world.broker.group("g").members[0].consumer
        assert member.paused == {("in", 0)}, consumer
        world.broker.release()
        wait_until(lambda: world.committed().get(0) == 300, "everything delivered once the queue drains")
    assert set(ids) <= set(world.answered())
    assert first_seen_in_order(world)


# --- rebalances -------------------------------------------------------------------------------------------


@controls(broken.KeepsStaleCommitPoints)
def test_a_stale_commit_point_never_moves_the_committed_offset_back(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=2)  # a second member takes partition 1, then gives it back
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(world.committed().get(1, -1))
            time.sleep(0.002)

    with running(world, worker_type):
        world.produce(3, partition=1)
        wait_until(lambda: world.committed().get(1) == 3, "the first commit")
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with world.broker.lock:  # the worker's next consume fetches offset 3 and serves the revoke
            world.produce(2, partition=1)
            other, assigned = other_member(world)
        wait_until(lambda: other.poll(0.01) is not None or bool(assigned), "the other member's assignment")
        world.produce(500, partition=1)

        def read_all() -> bool:
            other.consume(1000, 0.05)
            return bool(other.position([TopicPartition("in", 1)])[0].offset == 505)

        wait_until(read_all, "the other member to read everything")
        other.commit(offsets=[TopicPartition("in", 1, 505)], asynchronous=False)
        other.close()
        wait_until(lambda: world.worker is not None and len(world.worker.assigned) == 2, "partition 1 back")
        time.sleep(0.3)
        sampling.set()
        sampler.join()
    went_back = [(a, b) for a, b in itertools.pairwise(samples) if b < a]
    assert not went_back, f"the committed offset went back: {went_back[:3]}"


@controls(broken.BreakerRemembersPartitions)
def test_breaker_counts_start_afresh_when_a_partition_comes_back(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    breaker = {"max_consecutive_invalid": 10, "max_invalid_ratio": 1.0, "window_records": 100_000}
    world = World(tmp_path, partitions=2, breaker=breaker)  # a second member takes partition 1 a while
    with running(world, worker_type):
        world.produce(8, partition=1, bad=lambda _i: True)
        wait_until(lambda: world.committed().get(1) == 8, "the first invalid run committed")
        other, assigned = other_member(world)
        wait_until(lambda: other.poll(0.01) is None and bool(assigned), "the other member's assignment")
        other.close()
        wait_until(lambda: world.worker is not None and len(world.worker.assigned) == 2, "partition 1 back")
        world.produce(5, partition=1, bad=lambda _i: True)
        wait_until(lambda: world.committed().get(1) == 13, "the second invalid run committed")
        assert world.health.readiness() == (True, "ok")


@controls(broken.BreakerCountsAbortsTwice)
def test_an_aborted_batch_is_not_counted_twice_by_the_breaker(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    breaker = {"max_consecutive_invalid": 10, "max_invalid_ratio": 1.0, "window_records": 100_000}
    world = World(tmp_path, partitions=1, breaker=breaker, delivery="exactly-once")
    with running(world, worker_type):
        with world.broker.lock:  # one batch, one failed commit
            world.broker.fail_commit(kafka_error(KafkaError.INVALID_TXN_STATE))
            world.produce(8, bad=lambda _i: True)
        wait_until(lambda: world.committed().get(0) == 8, "the batch committed after the abort")
        assert world.health.readiness() == (True, "ok")
    assert len(world.dead_letters()) == 8


# --- exactly-once -----------------------------------------------------------------------------------------


@controls(broken.NeverIsolates)
def test_exactly_once_isolates_a_refused_dead_letter_instead_of_aborting_forever(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1, delivery="exactly-once")
    world.broker.create_topic("dlq", 1, max_message_bytes=600)  # the garbage's envelope is ~1,200 bytes
    with running(world, worker_type):
        with world.broker.lock:  # one batch: the refused dead letter has neighbours on both sides
            ids = world.produce(3)
            world.broker.produce("in", b"\xff" * 1000, b"garbage", partition=0)
            ids += world.produce(3)
        wait_until(lambda: world.committed().get(0) == 7, "the batch committed")
        assert world.health.readiness() == (True, "ok")
    assert world.exit_code == 0
    metrics = world.metrics.render().decode()
    # The batch's transaction, then the record's own: after that its truncated dead letter goes.
    assert "rtml_transaction_aborts_total 2.0" in metrics
    dead = world.broker.visible("dlq")
    assert [r.key for _, _, r in dead] == [b"garbage"]
    record = dead[0][2]
    assert record.value == b"" and dict(record.headers or [])["rtml.errors.value.truncated"] == b"1000"
    assert {event_id for _, event_id, _ in world.scores()} == set(ids)


@controls(broken.LeavesUnproducedSegments)
def test_exactly_once_reads_again_what_an_aborted_segment_left_unproduced(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=2, delivery="exactly-once")
    with running(world, worker_type) as worker:
        world.produce(3, partition=0)
        world.produce(3, partition=1)
        wait_until(lambda: world.committed() == {0: 3, 1: 3}, "the first batches committed")
        # in/0/4 is a suspect: the next batch is cut [in/0/3] [in/0/4] [in/0/5, in/1/3..5], and the
        # suspect's transaction aborts (its score times out), so the segment after it is never produced.
        worker.ctx.suspects.reasons[("in", 0, 4)] = "seeded by the test"
        world.broker.fail_deliveries("scores", kafka_error(KafkaError._MSG_TIMED_OUT), key=b"e7")
        with world.broker.lock:
            ids = world.produce(3, partition=0) + world.produce(3, partition=1)
        wait_until(lambda: world.committed() == {0: 6, 1: 6}, "every event committed")
    assert set(ids) <= set(world.answered())
    assert max(world.answered().values()) == 1


@controls(broken.NamesNoCause)
def test_a_fenced_replica_exits_non_zero_naming_the_transactional_id(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1, delivery="exactly-once")
    with running(world, worker_type):
        world.produce(3)
        wait_until(lambda: world.committed().get(0) == 3, "the first batch committed")
        world.broker.clients().producer({"transactional.id": "t-0"}).init_transactions()
        world.produce(3)
        wait_until(lambda: not world.running, "the fenced worker to stop")
    assert world.exit_code == 1
    alive, reason = world.health.liveness()
    assert not alive and "fenced" in reason and "'t-0'" in reason
    assert world.committed().get(0) == 3


def assert_exited_scoring_once(world: World, ids: list[str]) -> None:
    """The worker stopped cleanly, and every one of ``ids`` was scored, none twice."""
    assert world.exit_code == 0
    assert set(ids) <= set(world.answered()) and max(world.answered().values()) == 1


def open_transaction(world: World, worker: Worker) -> list[str]:
    """A first batch committed, then a transaction whose outputs the broker holds; the held events' ids."""
    world.produce(3)
    wait_until(lambda: world.committed().get(0) == 3, "the first batch committed")
    world.broker.hold("scores")
    ids = world.produce(3)
    wait_until(lambda: len(worker.producer) > 0, "a transaction holding outputs")
    return ids


def test_exactly_once_commits_nothing_once_its_consumer_is_outside_the_group(tmp_path: Path) -> None:
    """The coordinator expired the replica mid-transaction; librdkafka reset its membership before the loop
    heard of it. Kafka would take the offsets anyway (see the contract suite): the transaction must abort,
    and the events be scored once, by the replica after it rejoined."""
    world = World(tmp_path, partitions=1, delivery="exactly-once")
    with running(world) as worker:
        ids = open_transaction(world, worker)
        assert isinstance(worker.consumer, InMemoryConsumer)
        world.broker.expire(worker.consumer)
        world.broker.release("scores")
        wait_until(lambda: "rtml_transaction_aborts_total 1.0" in world.metrics.render().decode(),
                   "the transaction aborted")  # fmt: skip
        wait_until(lambda: world.committed().get(0) == 6, "the batch committed after the rejoin")
    assert_exited_scoring_once(world, ids)


def renewals(world: World, cause: str) -> float:
    series = f'rtml_producer_renewals_total{{cause="{cause}"}}'
    line = next(li for li in world.metrics.render().decode().splitlines() if li.startswith(series))
    return float(line.split()[-1])


@controls(broken.ExitsOnATimedOutTransaction)
def test_a_transaction_the_coordinator_timed_out_goes_on_with_a_new_producer(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    """A replica starved past transaction_timeout_ms (a SIGSTOP, a long pause) wakes to a fatal error: it
    is no twin's fencing, so a new producer takes over and the batch is scored again, once."""
    world = World(tmp_path, partitions=1, delivery="exactly-once", transaction_timeout_ms=1000)
    with running(world, worker_type) as worker:
        ids = open_transaction(world, worker)
        time.sleep(1.1)  # past transaction_timeout_ms
        world.broker.time_out_transactions()
        world.broker.release("scores")
        wait_until(lambda: world.committed().get(0) == 6, "the batch committed by a new producer")
        assert world.running and renewals(world, "timed_out") == 1
    assert_exited_scoring_once(world, ids)


@controls(broken.AbortsHoldingOutputs)
def test_a_transaction_still_holding_outputs_is_left_to_a_new_producer_not_aborted(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    """Outputs still unsent when the transaction must end (here the consumer fell out of the group while
    the broker held them): librdkafka can abort the process on an AddPartitionsToTxn answer arriving after
    abort_transaction completed (the chaos suite's network partition, 2 runs in 5). A new producer, whose
    init_transactions aborts the old one's transaction, takes over instead; the batch is scored once."""
    world = World(tmp_path, partitions=1, delivery="exactly-once", transaction_timeout_ms=1000)
    with running(world, worker_type) as worker:
        ids = open_transaction(world, worker)
        assert isinstance(worker.consumer, InMemoryConsumer)
        world.broker.expire(worker.consumer)
        wait_until(lambda: renewals(world, "outputs_held") == 1, "the producer given up")
        world.broker.release("scores")
        wait_until(lambda: world.committed().get(0) == 6, "the batch committed by a new producer")
        assert world.running and world.broker.aborts_holding_outputs == 0
    assert_exited_scoring_once(world, ids)


@controls(broken.ExitsOnADesynchronisedProducer)
def test_a_producer_out_of_sequence_goes_on_with_a_new_producer(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    """After a leader bounce librdkafka's idempotent producer can lose step with the broker's sequence
    numbers, a fatal OUT_OF_ORDER_SEQUENCE_NUMBER in a young transaction (the chaos suite's exactly-once
    leader bounce: two replicas exited 1). No twin fenced it: a new producer takes over, the batch once."""
    world = World(tmp_path, partitions=1, delivery="exactly-once")
    with running(world, worker_type):
        world.produce(3)
        wait_until(lambda: world.committed().get(0) == 3, "the first batch committed")
        desync = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence desynchronization", fatal=True)
        world.broker.fail_deliveries("scores", desync)
        ids = world.produce(3)
        wait_until(lambda: world.committed().get(0) == 6, "the batch committed by a new producer")
        assert world.running and renewals(world, "desynchronised") == 1
    assert_exited_scoring_once(world, ids)


@pytest.mark.parametrize(
    "abort_error",
    [KafkaError(KafkaError.INVALID_TXN_STATE, "the coordinator aborted it", fatal=True),
     KafkaError(KafkaError._TIMED_OUT, "the coordinator is unreachable", retriable=True)],
    ids=["fatal", "timing-out"],
)  # fmt: skip
def test_an_abort_that_fails_is_left_to_a_new_producer(tmp_path: Path, abort_error: KafkaError) -> None:
    """Outputs timed out in a transaction older than its timeout, and the abort failed in turn (in the
    chaos suite's network partition: INVALID_TXN_STATE, the worker exited 1): a new producer, whose
    init_transactions aborts what the old one had open, takes over; the batch is scored once."""
    world = World(tmp_path, partitions=1, delivery="exactly-once", transaction_timeout_ms=1000)
    with running(world) as worker:
        ids = open_transaction(world, worker)
        time.sleep(1.1)  # past transaction_timeout_ms
        for _ in range(3):  # every retry of a timing-out abort
            world.broker.fail_abort(abort_error)
        world.broker.expire_held()
        world.broker.release("scores")
        wait_until(lambda: world.committed().get(0) == 6, "the batch committed by a new producer")
        assert world.running
    assert_exited_scoring_once(world, ids)


@controls(broken.WaitsOnStuckCalls)
def test_send_offsets_stuck_past_the_transaction_deadline_is_given_up_for_a_new_producer(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    """librdkafka's send_offsets_to_transaction can block past its timeout (#5456, #5511): the loop gives
    the producer up at the transaction's deadline, and a new one commits the batch once."""
    world = World(tmp_path, partitions=1, delivery="exactly-once", transaction_timeout_ms=1000)
    with running(world, worker_type):
        try:
            world.produce(3)
            wait_until(lambda: world.committed().get(0) == 3, "the first batch committed")
            world.broker.stall_offsets()
            ids = world.produce(3)
            wait_until(lambda: renewals(world, "stuck") >= 1, "the stuck producer given up")
            world.broker.stall_offsets(False)
            wait_until(lambda: world.committed().get(0) == 6, "the batch committed by a new producer")
            assert world.running
        finally:
            world.broker.stall_offsets(False)  # a broken worker's stuck call returns, so it can stop
    assert_exited_scoring_once(world, ids)


# --- signals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_drains_commits_and_exits_0(tmp_path: Path, signum: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("signal_child.py")), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signum)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, f"killed by the signal: {child.returncode}"
    assert json.loads(out.splitlines()[-1]) == {"code": 0, "committed": {"0": 20}}


# --- what the loop holds ------------------------------------------------------------------------------------


def test_a_batch_waiting_for_the_registry_is_not_retried_during_an_output_backoff(tmp_path: Path) -> None:
    registry = FlakyRegistry()
    world = World(tmp_path, partitions=1, registry=registry)
    worker = Worker(world.settings, world.pipeline(), world.metrics, world.health, world.broker.clients())
    worker.consumer.subscribe(["in"], on_assign=worker.rebalance.on_assign)
    registry.up = False
    world.produce(3)
    wait_until(lambda: (worker._turn(), worker._registry_retry_at is not None)[1], "the batch to wait")
    registry.up = True
    calls = registry.calls
    worker._registry_retry_at = time.monotonic() - 1  # the registry's wait is over...
    worker.delivery.resume_at = time.monotonic() + 60  # ...but the outputs' backoff is not
    for _ in range(5):
        worker._turn()
    assert registry.calls == calls and world.scores() == [], "produced during the outputs' backoff"
    worker.consumer.close()


def test_suspects_of_a_partition_no_longer_owned_are_forgotten(tmp_path: Path) -> None:
    world = World(tmp_path, partitions=2)
    with running(world) as worker:
        # ready means one partition: an assignment of partition 1 not yet run would go to the other member
        wait_until(lambda: len(worker.assigned) == 2, "both partitions assigned to the worker")
        worker.ctx.suspects.reasons[("in", 1, 5)] = "seeded by the test"
        worker.ctx.suspects.reasons[("in", 0, 5)] = "seeded by the test"
        other, assigned = other_member(world)
        wait_until(lambda: other.poll(0.01) is None and bool(assigned), "the other member's assignment")
        wait_until(lambda: len(worker.assigned) == 1, "partition 1 revoked from the worker")
        assert set(worker.ctx.suspects.reasons) == {("in", 0, 5)}
        other.close()


def test_an_isolated_record_whose_outputs_wait_too_long_rewinds_instead_of_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "AWAIT_S", 0.5)
    world = World(tmp_path, partitions=1, kafka={"producer_extra": {"queue.buffering.max.messages": 2}})
    with running(world) as worker:
        world.produce(2)
        wait_until(lambda: world.committed().get(0) == 2, "the first events committed")
        worker.ctx.suspects.reasons[("in", 0, 4)] = "seeded by the test"
        world.broker.hold("scores")  # the queue fills while the isolated record is awaited
        ids = world.produce(5)
        time.sleep(1.5)
        assert world.running, "the worker stopped"
        world.broker.release()
        wait_until(lambda: world.committed().get(0) == 7, "every event committed")
    assert world.exit_code == 0
    assert set(ids) <= set(world.answered())


# --- swapping pipelines -----------------------------------------------------------------------------------


@controls(broken.SwapsOnlyWithABatch)
def test_an_idle_worker_takes_a_swap_at_once_and_scores_with_it(
    tmp_path: Path, worker_type: type[Worker]
) -> None:
    world = World(tmp_path, partitions=1)
    with running(world, worker_type) as worker:
        first = world.produce(3, partition=0)
        wait_until(lambda: set(first) <= set(world.answered()), "the first events answered")
        new = world.pipeline()
        taken = worker.swap_pipeline(new)
        wait_until(taken.done, "the swap taken with no event arriving", 5)
        assert taken.result() is True and worker.pipeline is new
        later = world.produce(3, partition=0)
        wait_until(lambda: set(later) <= set(world.answered()), "the later events answered")
    assert world.exit_code == 0


# A graph that compiles and fits but rejects every row: an id like "e3" is no int64.
REJECTS_ALL = {
    **loop_world.GRAPH,
    "name": "rejects",
    "nodes": [
        {"id": "strict", "kind": "astype", "columns": ["id"], "dtype": "int64"},
        {"id": "back", "kind": "astype", "columns": ["id"], "dtype": "string"},
        *loop_world.GRAPH["nodes"],
    ],
}


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
@controls(broken.KeepsTheBreakerOpen)
def test_a_new_pipeline_closes_a_tripped_breaker_and_scores_what_the_trip_left(
    tmp_path: Path, worker_type: type[Worker], delivery: str
) -> None:
    breaker = {"max_consecutive_invalid": 5, "window_records": 100_000}
    world = World(tmp_path, partitions=1, breaker=breaker, delivery=delivery)
    with running(world, worker_type) as worker:
        good = world.produce(3, partition=0)
        wait_until(lambda: world.committed().get(0) == 3, "the good events committed")
        assert worker.swap_pipeline(world.pipeline(REJECTS_ALL)).result(timeout=5) is True
        tripped = world.produce(20, partition=0)
        wait_until(lambda: "breaker" in world.health.readiness()[1], "the breaker tripped by the bad version")
        assert worker.swap_pipeline(world.pipeline()).result(timeout=5) is True  # the rollback
        wait_until(lambda: world.health.readiness() == (True, "ok"), "ready again after the rollback")
        wait_until(lambda: world.committed().get(0) == 23, "everything committed after the rollback")
    answered = world.answered()
    assert set(good) | set(tripped) <= set(answered), "every event answered, those after the trip too"
    assert len(world.dead_letters()) <= 5, "no more dead-lettered in a row than the breaker allows"
    assert world.exit_code == 0


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
@controls(broken.IgnoresSuspend)
def test_a_suspended_worker_commits_what_is_done_pauses_and_resumes_with_a_new_pipeline(
    tmp_path: Path, worker_type: type[Worker], delivery: str
) -> None:
    world = World(tmp_path, partitions=2, delivery=delivery)
    with running(world, worker_type) as worker:
        done = world.produce(4, partition=0) + world.produce(4, partition=1)
        wait_until(lambda: world.total_committed() == 8, "the first events committed")
        assert worker.suspend("deployment cars deleted").result(timeout=5) is True
        assert world.health.readiness() == (False, "paused: deployment cars deleted")
        held = world.produce(5, partition=0) + world.produce(5, partition=1)
        time.sleep(0.5)
        assert set(world.answered()) == set(done), "nothing is scored while suspended"
        assert world.total_committed() == 8
        assert worker.swap_pipeline(world.pipeline()).result(timeout=5) is True  # a version published again
        wait_until(lambda: world.total_committed() == 18, "everything committed once resumed")
        assert world.health.readiness() == (True, "ok")
    assert world.answered() == dict.fromkeys(done + held, 1)
    assert world.exit_code == 0
