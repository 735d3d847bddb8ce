"""Records whose output the broker refused: each is produced alone on the replay, so that one record cannot
fail its whole batch again and again.

The loop owns one ``Suspects`` and cuts every batch around them (``segments``); the delivery modes ``note``
them from the failures of a rewind (at-least-once) or an abort (exactly-once), and ``remove`` one once its
output, or the replacement ``replace_refused`` made, went out. All on the loop's thread; nothing here blocks
or raises.

A record the broker refused (too large, invalid: ``faults.is_record_fault``), in order:
  1. its input becomes a suspect, matched to the failure by the output's topic, key and value
     (``Outputs.find``);
  2. on the replay it is a segment of its own, produced after the segments before it and before those after
     it (at-least-once: every segment awaited while there are suspects);
  3. delivered (or committed), it is no longer a suspect;
  4. refused again as a record, its output is replaced (a score by its dead letter with the broker's reason,
     a dead letter by its envelope truncated to nothing) and the replacement goes instead;
  5. failed in any other way, the batch is rewound again, the record still a suspect.
"""

from __future__ import annotations

from confluent_kafka import Message

from worker.runtime import faults
from worker.runtime.metrics import Metrics
from worker.runtime.sink import Outputs, Sink
from worker.runtime.tracker import Failure

Coordinates = tuple[str, int, int]  # topic, partition, offset of one input record
Segment = tuple[list[Message], bool]  # messages, and whether they are one suspect isolated


class Suspects:
    """The suspect records by their coordinates, with the broker's reason for refusing their output."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.reasons: dict[Coordinates, str] = {}

    def __len__(self) -> int:
        return len(self.reasons)

    def segments(self, batch: list[Message]) -> list[Segment]:
        """The batch as one segment, or split so that every suspect record is a segment of its own."""
        if not self.reasons:
            return [(batch, False)]
        segments: list[Segment] = []
        run: list[Message] = []
        for message in batch:
            if coordinates(message) in self.reasons:
                if run:
                    segments.append((run, False))
                segments.append(([message], True))
                run = []
            else:
                run.append(message)
        if run:
            segments.append((run, False))
        return segments

    def note(self, outputs: Outputs | None, failed: list[Failure]) -> int:
        """Record-fault failures: their inputs become suspects (produced alone on the replay). How many."""
        refused = [f for f in failed if faults.is_record_fault(f.error)]
        self.metrics.output_failures("record", len(refused))
        self.metrics.output_failures("broker", len(failed) - len(refused))
        matched: set[int] = set()
        for failure in refused if outputs is not None else ():
            assert outputs is not None
            i = outputs.find(failure, exclude=matched)
            if i is not None:
                matched.add(i)
                self.reasons[coordinates(outputs.batch[outputs.rows[i]])] = faults.describe(failure.error)
        return len(refused)

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions revoked, lost or assigned afresh: their suspects are the next owner's to find."""
        self.reasons = {c: r for c, r in self.reasons.items() if (c[0], c[1]) not in partitions}

    def remove(self, message: Message) -> None:
        """``message``'s output (or its replacement) went out: it is no longer a suspect."""
        self.reasons.pop(coordinates(message), None)


def replace_refused(sink: Sink, outputs: Outputs, failures: list[Failure]) -> str | None:
    """An isolated record's outputs, when every failure is a record fault: replaced in place (a score by its
    dead letter, a dead letter by its envelope truncated to nothing); the broker's reason, else None."""
    if not failures or not all(faults.is_record_fault(f.error) for f in failures):
        return None
    reason = faults.describe(failures[0].error)
    for i in range(len(outputs)):  # one record, one output: a score or a dead letter
        if outputs.dead[i] is None:
            sink.dead_letter_of(outputs, i, f"the broker refused the score: {reason}")
        else:
            sink.truncate(outputs, i, limit=0)
    return reason


def coordinates(message: Message) -> Coordinates:
    return message.topic(), message.partition(), message.offset()  # type: ignore[return-value]
