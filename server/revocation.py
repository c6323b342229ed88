"""Revoked tokens: all of a user's tokens issued before a moment, or one token by its ``jti``.

Kept in Redis (cluster mode) with a TTL of the longest token lifetime, so revocations survive
gateway restarts and lapse once every token they could match has expired anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from .auth import Claims
from .keys import Keys


class Revocations(Protocol):
    async def revoke(self, user_id: str, jti: str | None, now: float) -> None: ...

    async def is_revoked(self, claims: Claims) -> bool: ...


def matches(claims: Claims, before: float | None, jti_revoked: bool) -> bool:
    """A token is revoked by its jti, or by having been issued before the user's cut-off."""
    if jti_revoked:
        return True
    return before is not None and (claims.iat is None or claims.iat < before)


class MemoryRevocations:
    def __init__(self, *, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._before: dict[str, tuple[float, float]] = {}  # user -> (cut-off, kept until)
        self._jtis: dict[str, float] = {}  # jti -> kept until

    async def revoke(self, user_id: str, jti: str | None, now: float) -> None:
        if jti:
            self._jtis[jti] = now + self._ttl_s
        else:
            self._before[user_id] = (now, now + self._ttl_s)

    async def is_revoked(self, claims: Claims) -> bool:
        now = self._clock()
        cut = self._before.get(claims.user_id)
        before = cut[0] if cut and cut[1] > now else None
        jti_revoked = bool(claims.jti) and self._jtis.get(claims.jti or "", 0) > now
        return matches(claims, before, jti_revoked)


class RedisRevocations:
    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: float) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._k = keys
        self._ttl_ms = max(1000, int(ttl_s * 1000))

    async def revoke(self, user_id: str, jti: str | None, now: float) -> None:
        if jti:
            await self._r.set(self._k.revoked_jti(jti), "1", px=self._ttl_ms)
        else:
            await self._r.set(self._k.revoked_user(user_id), repr(now), px=self._ttl_ms)

    async def is_revoked(self, claims: Claims) -> bool:
        keys = [self._k.revoked_user(claims.user_id)] + ([self._k.revoked_jti(claims.jti)] if claims.jti else [])
        values = await self._r.mget(keys)
        before = float(values[0]) if values[0] is not None else None
        return matches(claims, before, len(values) > 1 and values[1] is not None)
