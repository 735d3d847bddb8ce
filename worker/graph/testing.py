"""Fakes shipped for tests of code built on the graph (as httpx ships MockTransport)."""

from __future__ import annotations

from collections.abc import Mapping

from worker.errors import ModelError


class InMemoryModels:
    """A ``ModelLoader`` over a dict of model id -> ONNX bytes. ``load`` never blocks."""

    def __init__(self, models: Mapping[str, bytes] | None = None) -> None:
        self._models = dict(models or {})

    def add(self, model_id: str, model: bytes) -> None:
        self._models[model_id] = model

    def load(self, model_id: str) -> bytes:
        """The bytes of ``model_id``; ``ModelError`` when there is no such model."""
        try:
            return self._models[model_id]
        except KeyError:
            raise ModelError(f"no model {model_id!r}", field="model_id") from None
