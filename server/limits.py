"""Token buckets for the limits a gateway facing the open internet needs, and their names.

``Bucket(rate, burst)`` refills ``rate`` tokens a second up to ``burst``; ``take()`` says
whether an action may go ahead. :class:`AddressLimiter` keeps one bucket per client address
for connection attempts (forgetting idle addresses so that it cannot grow without bound).
:class:`Limit` names every limit; each has a ``gamegw_limit_hits_total{limit=...}`` metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class Limit(StrEnum):
    """Every limit, as its metric label. What the client sees when it is hit is in the comment."""

    EVENTS = "events"  # events per connection per second: `rate_limited` ack
    ABUSE_DISCONNECT = "abuse_disconnect"  # rate_limited acks kept coming: closed with 4029
    HANDSHAKES = "handshakes"  # connection attempts per address: `rate_limited` (4029) refusal
    CONNECTIONS_PER_USER = "connections_per_user"  # 4504: refused, or the oldest is replaced
    TOKEN_SIZE = "token_size"  # `token_invalid` (4500) refusal
    ACTION_SIZE = "action_size"  # `payload_too_large` ack
    MESSAGE_SIZE = "message_size"  # websocket: 4413 then close 1009; polling: HTTP 413 then 4413
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # never joined /game: the transport is closed
    SLOW_REQUEST = "slow_request"  # a polling body that does not arrive in time: HTTP 408
    SLOW_CONSUMER = "slow_consumer"  # unsent bytes over max_outbound_bytes: the TCP connection is cut


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
