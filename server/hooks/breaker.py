"""A circuit breaker for the hook: a dead backend is not called on every event.

Closed (calls go through) until ``failures`` calls in a row fail; then open (no calls) for
``cooldown_s``; then half-open: one call probes the hook while the others are treated as if
it were still open. The probe's success closes the breaker, its failure opens it again for
another cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, failures: int, cooldown_s: float, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State, int], None] = lambda state, failures: None) -> None:
        self.failures_to_open = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.on_change = on_change  # (new state, failures in a row) whenever it opens or closes
        self.state = State.CLOSED
        self.failures = 0  # in a row
        self.opened_at = 0.0

    def admit(self) -> tuple[bool, bool]:
        """``(call, probe)``: whether to call the hook now, and whether that call is the probe."""
        if self.state is State.CLOSED:
            return True, False
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s:
            self.state = State.HALF_OPEN  # this caller probes; the others wait for its outcome
            return True, True
        return False, False

    def success(self) -> None:
        self.failures = 0
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.on_change(State.CLOSED, 0)

    def failure(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or (self.state is State.CLOSED and self.failures >= self.failures_to_open):
            reopened = self.state is State.HALF_OPEN
            self.state, self.opened_at = State.OPEN, self.clock()
            if not reopened:
                self.on_change(State.OPEN, self.failures)

    def abandon(self) -> None:
        """The probe was cancelled before it had an answer: the next call probes instead."""
        if self.state is State.HALF_OPEN:
            self.state, self.opened_at = State.OPEN, self.clock() - self.cooldown_s
