"""A pipeline swap handed to the loop is never lost, whenever it lands; its future says when it is used."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from worker.runtime.handover import Handover


class ReadThenClear(Handover[str]):
    """Negative control: the loop's old swap, which read the slot and cleared it in two steps."""

    def take(self) -> tuple[str, Any] | None:
        taken = self._next
        self._next = None
        return taken


def interleaved(base: type[Handover[str]]) -> Handover[str]:
    """A handover on which an offer from another thread lands just as ``take`` reads the slot."""

    class Interleaved(base):  # type: ignore[valid-type, misc]
        armed = False

        @property  # type: ignore[misc]
        def _next(self) -> Any:
            value = self.__dict__.get("_slot")
            if self.armed and threading.current_thread() is threading.main_thread():
                self.armed = False
                offering = threading.Thread(target=lambda: self.offered.append(self.offer("second")))
                offering.start()
                offering.join(0.2)  # a take that holds the slot's lock keeps it waiting
            return value

        @_next.setter
        def _next(self, value: Any) -> None:
            self.__dict__["_slot"] = value

    handover: Any = Interleaved()
    handover.offered = []
    return handover  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "base",
    [Handover, pytest.param(ReadThenClear, marks=pytest.mark.xfail(strict=True, reason="negative control"))],
)
def test_an_offer_landing_while_the_loop_takes_is_taken_next(base: type[Handover[str]]) -> None:
    handover: Any = interleaved(base)
    first = handover.offer("first")
    handover.armed = True
    taken = handover.take()
    assert taken is not None and taken[0] == "first"
    taken[1].set_result(True)
    for _ in range(50):  # the offer waits for the lock the take held
        if handover.offered:
            break
        threading.Event().wait(0.01)
    later = handover.take()
    assert later is not None and later[0] == "second", "the swap offered during the take was lost"
    assert first.result(0) is True


def test_an_offer_replaced_before_it_was_taken_is_told_so() -> None:
    handover: Handover[str] = Handover()
    old, new = handover.offer("v2"), handover.offer("v3")
    assert old.result(0) is False and not new.done()
    taken = handover.take()
    assert taken is not None and taken[0] == "v3" and handover.take() is None


def test_many_threads_offering_while_the_loop_takes_lose_nothing() -> None:
    handover: Handover[int] = Handover()
    futures = []
    lock = threading.Lock()

    def offer(start: int) -> None:
        for i in range(start, start + 500):
            future = handover.offer(i)
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=offer, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    used = 0
    while True:
        alive = any(t.is_alive() for t in threads)
        taken = handover.take()
        if taken is not None:
            taken[1].set_result(True)
            used += 1
        elif not alive:
            break
    for thread in threads:
        thread.join()
    # every offer was either used or superseded by a later one, never left unanswered
    assert all(f.done() for f in futures) and sum(f.result() for f in futures) == used
