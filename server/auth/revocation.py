"""Revoked tokens: all of a user's tokens issued before a moment, or one token by its ``jti``.

Kept in Redis (cluster mode), so revocations survive gateway restarts, for as long as a token
they match can still be accepted, and no longer:

* the verifier refuses a token that lives longer than ``jwt_max_lifetime_s`` (``exp - iat``, or
  ``exp - now`` without ``iat``), so a token issued before a user's cut-off expires by the
  cut-off plus ``jwt_max_lifetime_s``: a user record is kept that long plus ``jwt_leeway_s``;
* a ``jti`` record is kept as long, or until that token's ``exp`` plus the leeway when the
  revocation says it (``exp``), whichever is later (then it holds even if
  ``jwt_max_lifetime_s`` is raised afterwards), and a later revocation never shortens it.

``iat`` has one-second resolution: a token minted in the cut-off's second, after it, carries an
``iat`` below the cut-off and counts as issued before it. A user's revocation therefore returns
only once the clock has reached the next whole second (:func:`settle`, under a second): a token
minted after it returned is accepted at once, and one minted before the cut-off never is. The
clock is read again after each sleep: a timer may fire before the clock gets there (uvloop's
timers, which ``gamectl serve`` runs on, count whole milliseconds and round).

A token without ``iat`` cannot be dated: a user's revocation refuses every such token of the
user while its record lasts, which covers all of them that could be accepted when it was made.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from ..state import rcluster
from ..state.keys import Keys
from .tokens import Claims

# keep a jti record ARGV[1] ms, unless it is already kept longer
KEEP_JTI = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
"""


class Revocations(Protocol):
    async def revoke(self, user_id: str, jti: str | None, now: float, exp: float | None = None) -> None:
        """Revoke the user's tokens issued before ``now``, or the token ``jti`` (whose ``exp`` may be given)."""
        ...

    async def is_revoked(self, claims: Claims) -> bool: ...


def matches(claims: Claims, before: float | None, jti_revoked: bool) -> bool:
    """A token is revoked by its jti, or by having been issued before the user's cut-off."""
    if jti_revoked:
        return True
    return before is not None and (claims.iat is None or claims.iat < before)


def settle_s(cut_off: float, now: float) -> float:
    """How long a revocation at ``cut_off`` waits, at ``now``, before it returns: until the next
    whole second, from which on a newly minted token's ``iat`` is not below the cut-off."""
    return min(1.0, max(0.0, math.ceil(cut_off) - now))


async def settle(cut_off: float, clock: Callable[[], float]) -> None:
    """Return once ``clock`` has reached the whole second after ``cut_off`` (see the module
    docstring), however early the event loop's timer fires; a second and a half at most."""
    deadline = time.monotonic() + 1.5  # a clock that stands still must not hold the revoke
    for _ in range(8):
        wait = settle_s(cut_off, clock())
        if wait <= 0 or time.monotonic() >= deadline:
            return
        await asyncio.sleep(wait + 0.0005)


class MemoryRevocations:
    def __init__(self, *, ttl_s: float, leeway_s: float = 0.0, clock: Callable[[], float] = time.time) -> None:
        self._ttl_s = ttl_s  # jwt_max_lifetime_s: no accepted token lives longer
        self._leeway_s = leeway_s
        self._clock = clock
        self._before: dict[str, tuple[float, float]] = {}  # user -> (cut-off, kept until)
        self._jtis: dict[str, float] = {}  # jti -> kept until

    async def revoke(self, user_id: str, jti: str | None, now: float, exp: float | None = None) -> None:
        self._forget(now)
        if jti:
            until = max(now + self._ttl_s, exp or 0.0) + self._leeway_s
            self._jtis[jti] = max(until, self._jtis.get(jti, 0.0))
        else:
            self._before[user_id] = (now, now + self._ttl_s + self._leeway_s)

    async def is_revoked(self, claims: Claims) -> bool:
        now = self._clock()
        cut = self._before.get(claims.user_id)
        before = cut[0] if cut and cut[1] > now else None
        jti_revoked = bool(claims.jti) and self._jtis.get(claims.jti or "", 0) > now
        return matches(claims, before, jti_revoked)

    def _forget(self, now: float) -> None:
        """Drop the records that lapsed (what Redis does with its TTLs)."""
        self._before = {u: cut for u, cut in self._before.items() if cut[1] > now}
        self._jtis = {j: until for j, until in self._jtis.items() if until > now}


class RedisRevocations:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: float, leeway_s: float = 0.0) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._ttl_s = ttl_s
        self._leeway_s = leeway_s
        self._keep_jti = redis.register_script(KEEP_JTI)

    async def revoke(self, user_id: str, jti: str | None, now: float, exp: float | None = None) -> None:
        if jti:
            keep_s = max(self._ttl_s, (exp or 0.0) - now) + self._leeway_s
            await self._keep_jti(keys=[self._k.revoked_jti(jti)], args=[max(1000, math.ceil(keep_s * 1000))])
        else:
            keep_ms = max(1000, math.ceil((self._ttl_s + self._leeway_s) * 1000))
            await self._r.set(self._k.revoked_user(user_id), repr(now), px=keep_ms)

    async def is_revoked(self, claims: Claims) -> bool:
        keys = [self._k.revoked_user(claims.user_id)] + ([self._k.revoked_jti(claims.jti)] if claims.jti else [])
        values = await rcluster.mget(self._r, keys)
        before = float(values[0]) if values[0] is not None else None
        return matches(claims, before, len(values) > 1 and values[1] is not None)
