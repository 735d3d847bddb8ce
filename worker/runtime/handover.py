"""A pipeline handed to the loop from another thread, taken at a batch boundary, acknowledged.

The loop used to read the next pipeline and clear it in two steps, so a pipeline offered between them was
cleared without ever being used, and nothing told the offering thread either way. Here the slot is taken
and cleared under one lock, and ``offer`` returns a future: True once the loop uses the pipeline, False if
a later offer replaced it before the loop got to it.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class Handover(Generic[T]):
    """One slot between any number of offering threads and the loop thread that takes from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: tuple[T, Future[bool]] | None = None

    def offer(self, item: T) -> Future[bool]:
        """Put ``item`` in the slot; a previous item still there is superseded (its future: False)."""
        done: Future[bool] = Future()
        with self._lock:
            replaced, self._next = self._next, (item, done)
        if replaced is not None:
            replaced[1].set_result(False)
        return done

    def take(self) -> tuple[T, Future[bool]] | None:
        """What the slot holds, emptying it; the caller sets the future once the item is in use."""
        with self._lock:
            taken, self._next = self._next, None
        return taken
