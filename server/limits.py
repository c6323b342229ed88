"""Token buckets for the limits a gateway facing the open internet needs.

``Bucket(rate, burst)`` refills ``rate`` tokens a second up to ``burst``; ``take()`` says
whether an action may go ahead. :class:`AddressLimiter` keeps one bucket per client address
for connection attempts (forgetting idle addresses so that it cannot grow without bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AddressLimiter:
    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.perf_counter,
                 max_addresses: int = 100_000) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._max = max_addresses
        self._buckets: dict[str, Bucket] = {}

    def allow(self, address: str) -> bool:
        if self._rate <= 0:
            return True
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._forget_full(now)
            bucket = self._buckets[address] = Bucket(self._rate, self._burst, now)
        return bucket.take(now)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold no information any more."""
        full_after = self._burst / self._rate
        self._buckets = {a: b for a, b in self._buckets.items() if now - b.stamp < full_after}
