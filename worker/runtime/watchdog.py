"""A librdkafka call run with a deadline of our own, for the calls that do not always keep their timeout.

``rd_kafka_send_offsets_to_transaction`` waits for the group coordinator without checking its timeout
(librdkafka issue #5456), and once that coordinator's broker has dropped out of the metadata it waits for a
broker state change that may not come for minutes (#5511). In the chaos suite's leader bounces all three
exactly-once replicas sat in that call for over 5 minutes after the coordinator's broker was SIGKILLed, their
loops not turning. ``Watchdog.call`` runs the call on a helper thread, beating the health heartbeat while it
waits, and raises ``Stuck`` once the deadline has passed; the caller then gives up the client (exactly-once
replaces its producer, whose new ``init_transactions`` fences the stuck one and aborts its transaction).

A client given up with its call still blocked cannot be destroyed under it: the helper thread keeps it alive
until the call returns. ``stuck`` counts those threads, so that the worker can stop (and be restarted, which
frees what librdkafka holds) rather than pile them up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.errors import InfrastructureError

log = logging.getLogger("worker.runtime")
BEAT_S = 0.05  # how often the heartbeat is beaten while a call is watched


class Stuck(InfrastructureError):
    """A watched call was still blocked at its deadline; it goes on blocking on its own thread. Uncaught,
    it stops the worker as any infrastructure failure does."""


class Watchdog:
    """Runs calls against a deadline; ``beat`` is called every ``BEAT_S`` while one waits."""

    def __init__(self, beat: Callable[[], None]) -> None:
        self._beat = beat
        self._blocked: list[threading.Thread] = []

    def call(self, what: str, call: Callable[[], None], deadline: float) -> None:
        """``call()`` on a helper thread, its exception re-raised here; ``Stuck`` past ``deadline``
        (``time.monotonic``)."""
        done, given_up = threading.Event(), threading.Event()
        raised: list[BaseException] = []
        started = time.monotonic()

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the waiting thread, which re-raises it
                raised.append(exc)
            finally:
                done.set()
                if given_up.is_set():
                    log.info("a call given up at its deadline returned", extra={
                        "call": what, "after_s": round(time.monotonic() - started, 1),
                        "error": str(raised[0]) if raised else None})  # fmt: skip

        thread = threading.Thread(target=run, name=f"rtml-{what}", daemon=True)
        thread.start()
        while not done.wait(BEAT_S):
            self._beat()
            if time.monotonic() >= deadline:
                given_up.set()
                self._blocked.append(thread)
                raise Stuck(f"{what} still blocked after {time.monotonic() - started:.1f} s")
        if raised:
            raise raised[0]

    def stuck(self) -> int:
        """How many calls given up at their deadline still block."""
        self._blocked = [thread for thread in self._blocked if thread.is_alive()]
        return len(self._blocked)
