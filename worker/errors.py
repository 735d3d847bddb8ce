"""The exception tree of rtml-worker.

    RtmlError
    ├── ConfigError            a bad config, graph or model: fail fast at start, name the field
    │   ├── GraphError         the scoring graph is invalid (carries the node id)
    │   └── ModelError         a model is missing, corrupt, unsafe or does not fit its node
    ├── RecordError            this event is bad: dead-letter it, never retry
    │   ├── DecodeError        framing, schema id, Avro body, guards (stage "decode")
    │   ├── ScoringError       a node or the inference rejected the row (stage "graph")
    │   └── EncodeError        the score record does not fit the output schema (stage "encode")
    └── InfrastructureError    broker, registry, model store: retry with backoff or stop; never dead-letter
        ├── RegistryUnavailable
        └── FatalError         the worker cannot go on safely: it stops, exits non-zero, commits nothing more
            └── NodeFailed     a graph node raised a bug or a runtime failure, not a bad row (node id)

Record errors carry where the event came from and its raw bytes, so the dead-letter path never has to find
the message again. Third-party exceptions are translated into this tree at exactly one place per boundary.
"""

from __future__ import annotations

from typing import Literal

Stage = Literal["decode", "validate", "graph", "encode", "produce"]


class RtmlError(Exception):
    """Root of every error rtml-worker raises on purpose."""


class ConfigError(RtmlError):
    """A config, graph or model is unusable; raised at start, never per event."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class GraphError(ConfigError):
    """The scoring graph is invalid. ``node_id`` names the node at fault, when there is one."""

    def __init__(self, message: str, *, node_id: str | None = None) -> None:
        self.node_id = node_id
        super().__init__(f"node {node_id!r}: {message}" if node_id else message)


class ModelError(ConfigError):
    """A model cannot be loaded, fails its hash check, or does not fit the node that uses it."""


class RecordError(RtmlError):
    """One event is bad. It goes to the dead-letter topic with its raw bytes; it is never retried."""

    stage: Stage = "decode"

    def __init__(
        self,
        reason: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        schema_id: int | None = None,
        node_id: str | None = None,
        model_id: str | None = None,
        key: bytes | None = None,
        value: bytes | None = None,
        stage: Stage | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.schema_id = schema_id
        self.node_id = node_id
        self.model_id = model_id
        self.key = key
        self.value = value
        if stage is not None:
            self.stage = stage


class DecodeError(RecordError):
    """The payload could not be framed, resolved or decoded, or it broke a guard."""

    stage: Stage = "decode"


class ScoringError(RecordError):
    """A node or an ONNX model rejected the row."""

    stage: Stage = "graph"


class EncodeError(RecordError):
    """The score record does not fit the output schema."""

    stage: Stage = "encode"


class InfrastructureError(RtmlError):
    """A dependency (broker, registry, model store) failed: retry with backoff or stop; never dead-letter."""


class RegistryUnavailable(InfrastructureError):
    """The Schema Registry could not be reached, timed out or answered 5xx."""


class FatalError(InfrastructureError):
    """The worker cannot go on safely (an output not delivered, a fenced producer): exit non-zero."""


class NodeFailed(FatalError):
    """A graph node raised something that is not a bad row: a bug in a kernel (KeyError, TypeError, ...),
    a MemoryError, or a runtime failure (ONNX Runtime's Fail, say). Retrying or dead-lettering the batch's
    records would hide it, so the worker stops on it; ``__cause__`` is the exception the kernel raised."""

    def __init__(self, node_id: str, cause: BaseException, *, model_id: str | None = None) -> None:
        self.node_id = node_id
        self.model_id = model_id
        super().__init__(
            f"node {node_id!r} failed: {type(cause).__name__}: {cause} "
            "(a bug or a runtime failure, not a bad record)"
        )
