"""The circuit breaker: stops a bad deploy from dead-lettering a whole topic.

Judged per input partition, once per batch, before anything of the batch is produced: a partition trips the
breaker when its run of consecutive invalid records would exceed ``max_consecutive_invalid``, or when the
invalid share of its current window of ``window_records`` records would exceed ``max_invalid_ratio`` (judged
once the window is full). A tripped breaker stays open: the worker produces nothing more, commits nothing
more, pauses its partitions and reports not ready, so at most ``max_consecutive_invalid`` records were
dead-lettered in a row, until a new pipeline is swapped in (a deployment's next version, or a rollback):
that closes it (``reset``) and the loop reads again from the committed offsets.

A partition's counts belong to the replica that owns it: they are forgotten when it is revoked, lost or
assigned (``forget``), and a batch whose transaction was aborted is taken back (``snapshot``/``restore``)
before it is admitted again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from worker.runtime.config import BreakerSettings


@dataclass
class _Partition:
    run: int = 0  # consecutive invalid records at the end of what was seen
    window_seen: int = 0
    window_invalid: int = 0


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.reason: str | None = None
        self._partitions: dict[tuple[str, int], _Partition] = {}

    @property
    def open(self) -> bool:
        return self.reason is not None

    def admit(self, topic: str, partitions: npt.NDArray[np.int64], invalid: npt.NDArray[np.bool_]) -> bool:
        """Account one batch of ``topic`` (rows in consume order); False (and open) if it must not go out."""
        if not self.settings.enabled:
            return True
        if self.open:
            return False
        if not invalid.any() and self._all_valid(topic, partitions):
            return True
        verdicts = [self._judge((topic, int(p)), invalid[partitions == p]) for p in np.unique(partitions)]
        tripped = next((v for v in verdicts if v is not None), None)
        if tripped is not None:
            self.reason = tripped
            return False
        return True

    def reset(self) -> None:
        """Closed again, every count forgotten (a new pipeline is judged afresh)."""
        self.reason = None
        self._partitions.clear()

    def forget(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Partitions no longer (or newly) ours: their history does not count here."""
        for tp in partitions:
            self._partitions.pop(tp, None)

    def snapshot(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], _Partition | None]:
        """The counts of ``partitions`` as they are now, for ``restore`` after an aborted batch."""
        return {tp: replace(state) if (state := self._partitions.get(tp)) else None for tp in partitions}

    def restore(self, snapshot: dict[tuple[str, int], _Partition | None]) -> None:
        """Undo what was admitted since ``snapshot`` (its batch was aborted and will come again)."""
        for tp, state in snapshot.items():
            if state is None:
                self._partitions.pop(tp, None)
            else:
                self._partitions[tp] = state

    def _all_valid(self, topic: str, partitions: npt.NDArray[np.int64]) -> bool:
        """The common case: no invalid record, so every run ends and windows just fill. False (nothing
        changed) when a window this batch completes holds too many invalid records from before."""
        window, ratio = self.settings.window_records, self.settings.max_invalid_ratio
        per_partition = np.bincount(partitions)  # partition numbers are small: cheaper than a sort
        ids = np.flatnonzero(per_partition)
        states = [self._partitions.setdefault((topic, p), _Partition()) for p in ids.tolist()]
        seen = [state.window_seen + n for state, n in zip(states, per_partition[ids].tolist(), strict=True)]
        if any(s >= window and st.window_invalid / s > ratio for st, s in zip(states, seen, strict=True)):
            return False
        for state, total in zip(states, seen, strict=True):
            state.run = 0
            state.window_seen, state.window_invalid = (
                (0, 0) if total >= window else (total, state.window_invalid)
            )
        return True

    def _judge(self, tp: tuple[str, int], invalid: npt.NDArray[np.bool_]) -> str | None:
        state = self._partitions.setdefault(tp, _Partition())
        limit = self.settings.max_consecutive_invalid
        if _longest_run(invalid, state.run) > limit:
            return f"{tp[0]}[{tp[1]}]: more than {limit} consecutive invalid records"
        window = self.settings.window_records
        seen, bad = state.window_seen + invalid.size, state.window_invalid + int(invalid.sum())
        if seen >= window and bad / seen > self.settings.max_invalid_ratio:
            return f"{tp[0]}[{tp[1]}]: {bad} of the last {seen} records invalid"
        state.window_seen, state.window_invalid = (0, 0) if seen >= window else (seen, bad)
        state.run = _trailing_run(invalid, state.run)
        return None


def _longest_run(invalid: npt.NDArray[np.bool_], carried: int) -> int:
    """Longest run of True, the first run extended by ``carried`` from earlier batches."""
    if invalid.size == 0:
        return carried
    edges = np.diff(np.concatenate(([0], invalid.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if starts.size == 0:
        return carried
    runs = ends - starts
    if starts[0] == 0:
        runs[0] += carried
    return max(int(runs.max()), carried)


def _trailing_run(invalid: npt.NDArray[np.bool_], carried: int) -> int:
    valid_at = np.flatnonzero(~invalid)
    return carried + invalid.size if valid_at.size == 0 else invalid.size - 1 - int(valid_at[-1])
