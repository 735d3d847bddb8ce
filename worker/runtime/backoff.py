"""Exponential backoff for the loop's retries (registry outages, failing outputs, aborted transactions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays doubling from ``first_s`` up to ``max_s``; ``reset`` after a success starts over."""

    first_s: float = 0.5
    max_s: float = 30.0
    current_s: float = 0.0
    attempts: int = 0

    def next(self) -> float:
        """The delay before the next attempt (one more failure counted)."""
        self.attempts += 1
        self.current_s = min(2 * self.current_s or self.first_s, self.max_s)
        return self.current_s

    def reset(self) -> None:
        self.current_s, self.attempts = 0.0, 0

    @property
    def failing(self) -> bool:
        return self.attempts > 0
