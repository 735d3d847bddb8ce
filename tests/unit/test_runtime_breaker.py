"""CircuitBreaker: consecutive-invalid runs across batches, the invalid ratio over a window, partitions
judged independently, a tripped breaker stays open; the run helpers against a plain Python reference."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.runtime.breaker import CircuitBreaker, _longest_run, _trailing_run
from worker.runtime.config import BreakerSettings

NO_RATIO = {"max_invalid_ratio": 1.0}  # a ratio above 1 is impossible: only runs can trip


def breaker(**values: object) -> CircuitBreaker:
    return CircuitBreaker(BreakerSettings.model_validate(values))


def admit(cb: CircuitBreaker, invalid: str, partitions: list[int] | None = None, topic: str = "in") -> bool:
    """Admit a batch written as a string: ``x`` an invalid row, ``.`` a valid one (one partition: 0)."""
    bad = np.array([c == "x" for c in invalid], dtype=np.bool_)
    parts = np.zeros(len(invalid), np.int64) if partitions is None else np.array(partitions, np.int64)
    return cb.admit(topic, parts, bad)


@pytest.mark.parametrize("limit", [1, 3, 7])
def test_exactly_the_limit_of_consecutive_invalid_records_passes_and_one_more_trips(limit: int) -> None:
    cb = breaker(max_consecutive_invalid=limit, **NO_RATIO)
    assert admit(cb, "." + "x" * limit + ".")
    assert not cb.open
    assert not admit(cb, "x" * (limit + 1))
    assert cb.open and cb.reason is not None
    assert cb.reason == f"in[0]: more than {limit} consecutive invalid records"


def test_a_run_carries_across_batch_boundaries() -> None:
    cb = breaker(max_consecutive_invalid=5, **NO_RATIO)
    assert admit(cb, "..xx")  # run 2 at the end
    assert admit(cb, "xxx")  # 5: exactly the limit, over three batches
    assert not cb.open
    assert not admit(cb, "x.........")  # the 6th in a row trips, though this batch has one invalid record
    assert cb.open


def test_a_valid_record_ends_the_run() -> None:
    cb = breaker(max_consecutive_invalid=3, **NO_RATIO)
    for batch in ["..xx", "x.xx", "x", ".", "xxx", ".xxx"]:
        assert admit(cb, batch), batch
    assert not cb.open


def test_an_empty_batch_keeps_the_run() -> None:
    cb = breaker(max_consecutive_invalid=3, **NO_RATIO)
    assert admit(cb, "xxx")
    assert admit(cb, "")
    assert not admit(cb, "x")


def test_partitions_are_judged_independently() -> None:
    cb = breaker(max_consecutive_invalid=3, **NO_RATIO)
    # Six invalid rows in a row in consume order, but three per partition: within the limit.
    assert admit(cb, "xxxxxx", partitions=[0, 1, 0, 1, 0, 1])
    assert admit(cb, ".x", partitions=[0, 2])  # partition 0 recovers, partition 2 starts its own run
    assert not cb.open
    assert not admit(cb, "x", partitions=[1])  # partition 1's fourth in a row
    assert cb.reason is not None and cb.reason.startswith("in[1]:")


def test_topics_with_the_same_partition_number_are_different_partitions() -> None:
    cb = breaker(max_consecutive_invalid=2, **NO_RATIO)
    assert admit(cb, "xx", topic="a")
    assert admit(cb, "xx", topic="b")
    assert not admit(cb, "x", topic="b")
    assert cb.reason is not None and cb.reason.startswith("b[0]:")


def test_a_tripped_breaker_stays_open() -> None:
    cb = breaker(max_consecutive_invalid=1, **NO_RATIO)
    assert not admit(cb, "xx")
    reason = cb.reason
    assert not admit(cb, "....")
    assert not admit(cb, ".", topic="other")
    assert cb.open and cb.reason == reason  # the first reason is the one reported


def test_the_ratio_trips_once_the_window_is_full() -> None:
    cb = breaker(max_consecutive_invalid=100, max_invalid_ratio=0.5, window_records=10)
    assert admit(cb, "xxxx")  # all invalid, but the window of 10 is not full yet
    assert admit(cb, "xx")
    assert not cb.open
    assert not admit(cb, "....")  # 6 of 10 invalid > 0.5
    assert cb.reason == "in[0]: 6 of the last 10 records invalid"


def test_a_ratio_equal_to_the_limit_passes() -> None:
    cb = breaker(max_consecutive_invalid=100, max_invalid_ratio=0.5, window_records=10)
    assert admit(cb, "x.x.x.x.x.")  # exactly half: not above the limit
    assert admit(cb, "xxxxx.....")
    assert not cb.open


def test_a_full_window_starts_again_rather_than_diluting_the_next_one() -> None:
    cb = breaker(max_consecutive_invalid=100, max_invalid_ratio=0.5, window_records=10)
    assert admit(cb, "." * 10)  # a clean window
    assert admit(cb, "xxx")
    assert not admit(cb, "xxx....")  # 6 of this window's 10; over both windows it would be 6 of 20
    assert cb.reason == "in[0]: 6 of the last 10 records invalid"


def test_a_window_is_judged_over_a_whole_batch_that_overfills_it() -> None:
    cb = breaker(max_consecutive_invalid=100, max_invalid_ratio=0.5, window_records=4)
    assert admit(cb, "." * 6 + "x" * 4)  # 4 of 10 invalid: below half
    assert not admit(cb, "." + "x" * 9)
    assert cb.reason == "in[0]: 9 of the last 10 records invalid"


def test_windows_are_per_partition() -> None:
    cb = breaker(max_consecutive_invalid=100, max_invalid_ratio=0.5, window_records=4)
    # Half of the batch is invalid (not above the limit), but all of partition 0's window is.
    assert not admit(cb, "x.x.x.x.", partitions=[0, 1, 0, 1, 0, 1, 0, 1])
    assert cb.reason == "in[0]: 4 of the last 4 records invalid"


def test_a_disabled_breaker_admits_everything() -> None:
    cb = breaker(enabled=False, max_consecutive_invalid=1, max_invalid_ratio=0.01, window_records=1)
    for _ in range(3):
        assert admit(cb, "x" * 50, partitions=[0, 1] * 25)
    assert not cb.open and cb.reason is None


# --- the run helpers against a per-record reference ------------------------------------------------------


def reference(invalid: list[bool], carried: int) -> tuple[int, int]:
    """(longest run, trailing run) of invalid records, counting ``carried`` invalid ones before the batch."""
    run = longest = carried
    for bad in invalid:
        run = run + 1 if bad else 0
        longest = max(longest, run)
    return longest, run


def as_array(invalid: list[bool]) -> npt.NDArray[np.bool_]:
    return np.array(invalid, dtype=np.bool_)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.booleans(), max_size=60), st.integers(0, 2_000))
def test_run_helpers_match_a_per_record_count(invalid: list[bool], carried: int) -> None:
    longest, trailing = reference(invalid, carried)
    assert _longest_run(as_array(invalid), carried) == longest
    assert _trailing_run(as_array(invalid), carried) == trailing


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), max_size=20), max_size=8),
    st.integers(1, 10),
)
def test_the_breaker_trips_exactly_when_the_per_record_run_exceeds_the_limit(
    batches: list[list[bool]], limit: int
) -> None:
    cb = breaker(max_consecutive_invalid=limit, **NO_RATIO)
    run = 0
    for batch in batches:
        longest, run = reference(batch, run)
        admitted = cb.admit("in", np.zeros(len(batch), np.int64), as_array(batch))
        assert admitted == (longest <= limit)
        if not admitted:
            break
