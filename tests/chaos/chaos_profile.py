"""Which chaos profile runs: the short one inside ``make test``, the full one with ``make chaos``.

``RTML_CHAOS_PROFILE=full`` (set by ``make chaos``) runs every scenario at least 3 times with its full
fault counts; otherwise the scenarios marked ``chaos_short`` run once with fewer faults, to stay inside
``make test``'s time. ``pick(short, full)`` is how a scenario says both.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")
FULL = os.environ.get("RTML_CHAOS_PROFILE", "short") == "full"
RUNS = 3 if FULL else 1
DELIVERIES = ("at-least-once", "exactly-once")


def pick(short: T, full: T) -> T:
    return full if FULL else short
