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

    EVENTS = "events"  # events per user per second (across reconnects): `rate_limited` ack
    ABUSE_DISCONNECT = "abuse_disconnect"  # rate_limited acks kept coming: closed with 4029
    ROOMS = "rooms"  # rooms per connection (max_rooms_per_connection): `room_limit` ack
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

    def level(self, now: float) -> float:
        """The tokens there would be at ``now`` (without taking one)."""
        return min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)

    def lower_to(self, tokens: float, stamp: float, now: float) -> None:
        """Take the lower of this bucket and another one's ``tokens`` at ``stamp``, both at ``now``."""
        other = min(self.burst, tokens + max(0.0, now - stamp) * self.rate)
        self.tokens, self.stamp = min(self.level(now), other), now

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


class Budget:
    """One user's event budget on this instance, shared by all of the user's connections here:
    events per second (``rate_limited`` acks) and the abuse counter (4029 when it runs out)."""

    __slots__ = ("abuse", "events", "holders", "limited")

    def __init__(self, events: Bucket, abuse: Bucket | None) -> None:
        self.events = events
        self.abuse = abuse
        self.limited = False  # the last event was refused with rate_limited
        self.holders = 0  # this instance's live connections of the user

    def snapshot(self, now: float) -> tuple[float, float, float] | None:
        """(event tokens, abuse tokens, now), or None when both buckets are full (nothing to keep)."""
        events = self.events.level(now)
        abuse = self.abuse.level(now) if self.abuse is not None else 0.0
        if events >= self.events.burst and (self.abuse is None or abuse >= self.abuse.burst):
            return None
        return events, abuse, now


class UserBudgets:
    """The event budget belongs to the user, not to a connection: reconnecting (here, or on
    another instance, through the snapshot the session store keeps) does not refill it.

    A user's connections on one instance share one :class:`Budget`. Across instances a budget
    travels as a snapshot written when the user's last connection here ends and read by the
    next connect, which takes the lower of it and what this instance still holds; a user who
    hops between instances while still connected may gain at most one burst per instance.
    """

    def __init__(self, rate: float, burst: float, abuse_max: int, abuse_window_s: float) -> None:
        self._rate = rate
        self._burst = burst
        self._abuse_max = abuse_max
        self._abuse_window_s = abuse_window_s
        self._by_user: dict[str, Budget] = {}
        self._released: set[str] = set()  # users with a budget and no connection here: prune's candidates

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def acquire(self, user_id: str, now: float, stored: tuple[float, float, float] | None) -> Budget:
        budget = self._by_user.get(user_id)
        if budget is None:
            abuse = None
            if self._abuse_max > 0 and self._abuse_window_s > 0:
                abuse = Bucket(self._abuse_max / self._abuse_window_s, self._abuse_max, now)
            budget = self._by_user[user_id] = Budget(Bucket(self._rate, self._burst, now), abuse)
        if stored is not None:
            events, abuse_tokens, stamp = stored
            budget.events.lower_to(events, stamp, now)
            if budget.abuse is not None:
                budget.abuse.lower_to(abuse_tokens, stamp, now)
        budget.holders += 1
        self._released.discard(user_id)
        return budget

    def release(self, user_id: str, now: float) -> tuple[tuple[float, float, float], float] | None:
        """A connection of the user ended here. When it was the last one and the budget is not
        full: (the snapshot to keep, for how many seconds it matters)."""
        budget = self._by_user.get(user_id)
        if budget is None:
            return None
        budget.holders -= 1
        if budget.holders > 0:
            return None
        self._released.add(user_id)
        snapshot = budget.snapshot(now)
        if snapshot is None:
            return None
        events, abuse, _ = snapshot
        refill_s = (self._burst - events) / self._rate
        if budget.abuse is not None:
            refill_s = max(refill_s, (budget.abuse.burst - abuse) / budget.abuse.rate)
        return snapshot, refill_s

    def prune(self, now: float) -> None:
        """Forget the budgets of users with no connection here whose buckets have refilled. Only
        those users are looked at: the sweep runs four times a second, and going through every
        user's budget cost a tenth of the CPU of 10,000 idle players."""
        for user_id in [u for u in self._released if self._by_user[u].snapshot(now) is None]:
            del self._by_user[user_id]
            self._released.discard(user_id)

    def __len__(self) -> int:
        return len(self._by_user)
