"""What `deploy status` computes of the group: each live member's lag."""

from __future__ import annotations


def test_a_members_lag_is_its_partitions_ends_past_the_groups_committed_offsets() -> None:
    from concurrent.futures import Future
    from types import SimpleNamespace

    from confluent_kafka import TopicPartition

    from worker.deploy.status import _lags

    def done(value: object) -> Future[object]:
        future: Future[object] = Future()
        future.set_result(value)
        return future

    class Client:
        def list_consumer_group_offsets(
            self, request: list[object], **_: object
        ) -> dict[str, Future[object]]:
            committed = [
                TopicPartition("in", 0, 40),
                TopicPartition("in", 1, -1001),
                TopicPartition("in", 2, 7),
            ]
            return {"g": done(SimpleNamespace(topic_partitions=committed))}

        def list_offsets(
            self, specs: dict[TopicPartition, object], **_: object
        ) -> dict[TopicPartition, Future[object]]:
            ends = {0: 100, 1: 5, 2: 7}
            return {tp: done(SimpleNamespace(offset=ends[tp.partition])) for tp in specs}

    def member(member_id: str, *partitions: int) -> SimpleNamespace:
        tps = [TopicPartition("in", p) for p in partitions]
        return SimpleNamespace(member_id=member_id, assignment=SimpleNamespace(topic_partitions=tps))

    lags = _lags(Client(), "g", [member("a", 0, 1), member("b", 2), member("c")], 1.0)
    assert lags == {"a": 60 + 5, "b": 0, "c": 0}  # none committed on partition 1: all of it is lag
