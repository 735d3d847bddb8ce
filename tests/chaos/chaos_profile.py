"""Which chaos profile runs: the short one inside ``make test``, the full one with ``make chaos``.

``RTML_CHAOS_PROFILE=full`` (set by ``make chaos``) runs every scenario at least 3 times with its full
fault counts; otherwise the scenarios marked ``chaos_short`` run once with fewer faults, to stay inside
``make test``'s time. ``RTML_CHAOS_PROFILE=every`` runs every scenario the short way, once (to try them all
in an hour). ``pick(short, full)`` is how a scenario says both.
"""

from __future__ import annotations

import os
from typing import TypeVar

T = TypeVar("T")
PROFILE = os.environ.get("RTML_CHAOS_PROFILE", "short")
if PROFILE not in ("short", "every", "full"):
    raise ValueError(f"RTML_CHAOS_PROFILE: {PROFILE!r} is none of short, every, full")
FULL = PROFILE == "full"
EVERY = PROFILE != "short"  # every scenario runs, not only those marked chaos_short
RUNS = 3 if FULL else 1
DELIVERIES = ("at-least-once", "exactly-once")


def pick(short: T, full: T) -> T:
    return full if FULL else short
