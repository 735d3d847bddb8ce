"""librdkafka errors as the loop acts on them: one place that says whose fault a failure is.

* a record fault: the broker (or the producer's local check) refuses this one record, whatever is retried:
  too large for the topic, or invalid for it. Its input is isolated and dead-lettered, the rest goes on;
* a fencing: another producer took this replica's transactional id: stop, and say so;
* a desynchronisation: the idempotent producer lost step with the broker's record of its sequence numbers
  (after a leader bounce, librdkafka reports OUT_OF_ORDER_SEQUENCE_NUMBER as fatal): that producer is done,
  but no one else holds the id, so a new one may take over;
* anything else (timeouts, a missing topic, an authorisation refused, purged messages): the broker side is
  not taking outputs now. Nothing is committed past them; the input is rewound and retried with backoff.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

RECORD_FAULTS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
})  # fmt: skip
FENCING = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
DESYNCHRONISED = frozenset({
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.INVALID_PRODUCER_ID_MAPPING,
})  # fmt: skip


def is_record_fault(error: KafkaError) -> bool:
    return error.code() in RECORD_FAULTS


def describe(error: KafkaError) -> str:
    """``NAME: text``, the way the logs, headers and readiness reasons show a librdkafka error."""
    return f"{error.name()}: {error.str()}"


def fenced_reason(error: KafkaError, transactional_id: str) -> str | None:
    """Why the producer stopped, in words an operator can act on; None when ``error`` is not a fencing."""
    if error.code() not in FENCING:
        return None
    return (
        f"fenced: another producer started with transactional_id {transactional_id!r} ({describe(error)}); "
        "two replicas share this transactional_id, or this replica was replaced by a newer one"
    )
