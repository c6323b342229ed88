"""Revocation records: the memory and the Redis implementation pass the same suite.

Which tokens a record refuses (a user's cut-off with whole-second ``iat``, one ``jti``), and how
long it is kept: until nothing it covers can still be accepted (``jwt_max_lifetime_s`` plus
``jwt_leeway_s`` after the revocation, or a token's own ``exp`` plus the leeway), then
forgotten. The memory store reads an injected clock; Redis forgets by the TTL it was given, on
its own clock, which no test can move: there :meth:`Revs.lapse` checks that the key expires
then, to the millisecond (``PEXPIRETIME`` against the server's ``TIME`` read around the revocation) and
deletes it, which is what Redis does at that moment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from gamegw.server.auth.revocation import MemoryRevocations, RedisRevocations, Revocations
from gamegw.server.auth.tokens import Claims
from gamegw.server.state.keys import Keys

START = 1000.0

SNAPSHOT_LAG_MS = 20  # how far Redis' cached command time may trail a TIME read just before


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Revs:
    store: Revocations
    clock: Clock
    keys: Keys
    redis: Redis | None = None
    # Redis only: the server's clock (ms) just before and just after each revocation, by its time
    revoked: dict[float, tuple[int, int]] = field(default_factory=dict)

    async def _server_ms(self) -> int:
        assert self.redis is not None
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def revoke(self, user_id: str, jti: str | None = None, *, at: float, exp: float | None = None) -> None:
        self.clock.now = at
        before = await self._server_ms() if self.redis is not None else 0
        await self.store.revoke(user_id, jti, at, exp)
        if self.redis is not None:
            self.revoked[at] = (before, await self._server_ms() + 1)

    async def refused(self, claims: Claims) -> bool:
        return await self.store.is_revoked(claims)

    async def lapse(self, *, user: str | None = None, jti: str | None = None, revoked_at: float,
                    until: float, probe: Claims) -> None:
        """The record (the user's or the jti's) written by the revocation at ``revoked_at``
        refuses ``probe`` until just before ``until`` and is gone at ``until``."""
        if self.redis is None:
            self.clock.now = until - 0.001
            assert await self.refused(probe)
            self.clock.now = until
        else:
            key = self.keys.revoked_user(user) if user else self.keys.revoked_jti(jti or "")
            expires_ms = await self.redis.pexpiretime(key)
            kept_ms = round((until - revoked_at) * 1000)
            low, high = self.revoked[revoked_at]
            # Redis counts an expiry from its cached command time, which may trail the TIME read
            # just before by a few milliseconds on a busy machine (seen in full runs: 3601999 and
            # 3601998 for 3602000). The bounds still tell every mutant of the keep time apart:
            # those that shorten it do so by a second or more.
            assert low - SNAPSHOT_LAG_MS + kept_ms <= expires_ms <= high + kept_ms, (expires_ms - low, kept_ms)
            assert await self.refused(probe)
            await self.redis.delete(key)  # Redis' expiry, at ``until``
        assert not await self.refused(probe)


Make = Callable[..., Awaitable[Revs]]


@pytest.fixture(params=["memory", "redis"])
async def revs(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Make]:
    clients: list[Redis] = []

    async def make(*, ttl_s: float, leeway_s: float = 0.0) -> Revs:
        clock, keys = Clock(START), Keys(redis_prefix)
        if request.param == "memory":
            return Revs(MemoryRevocations(ttl_s=ttl_s, leeway_s=leeway_s, clock=clock), clock, keys)
        redis = Redis.from_url(request.getfixturevalue("redis_server").url, decode_responses=True)
        clients.append(redis)
        return Revs(RedisRevocations(redis, keys, ttl_s=ttl_s, leeway_s=leeway_s), clock, keys, redis)

    yield make
    for client in clients:
        await client.aclose()


def token(iat: float | None, exp: float = START + 60, *, user: str = "alice", jti: str | None = None) -> Claims:
    return Claims(user_id=user, exp=exp, iat=iat, jti=jti)


class TestUserCutOff:
    async def test_tokens_issued_before_the_cut_off_are_refused(self, revs: Make) -> None:
        r = await revs(ttl_s=60)
        await r.revoke("alice", at=1000.0)
        assert await r.refused(token(iat=999))
        assert await r.refused(token(iat=999.5))
        assert not await r.refused(token(iat=1000))  # issued at the cut-off: not before it
        assert not await r.refused(token(iat=1001))
        assert await r.refused(token(iat=999, jti="t-1"))  # whatever its jti
        assert not await r.refused(token(iat=999, user="bob"))  # the user's tokens only

    async def test_a_token_of_the_cut_offs_second_counts_as_issued_before_it(self, revs: Make) -> None:
        """``iat`` is whole seconds: a token minted at 1000.7 says 1000, below a cut-off of
        1000.5, and is refused; from 1001 on (where settle() lets the revocation return) none is."""
        r = await revs(ttl_s=60)
        await r.revoke("alice", at=1000.5)
        assert await r.refused(token(iat=1000))
        assert not await r.refused(token(iat=1001))

    async def test_a_token_without_iat_is_refused_while_the_record_lasts(self, revs: Make) -> None:
        r = await revs(ttl_s=60)
        undated = token(iat=None, exp=1030)
        assert not await r.refused(undated)
        await r.revoke("alice", at=1000.0)
        assert await r.refused(undated)
        await r.lapse(user="alice", revoked_at=1000.0, until=1060.0, probe=undated)

    async def test_a_later_revocation_moves_the_cut_off(self, revs: Make) -> None:
        r = await revs(ttl_s=60)
        await r.revoke("alice", at=1000.0)
        assert not await r.refused(token(iat=1005))
        await r.revoke("alice", at=1010.0)
        assert await r.refused(token(iat=1005))
        assert not await r.refused(token(iat=1010))
        await r.lapse(user="alice", revoked_at=1010.0, until=1070.0, probe=token(iat=1009))

    async def test_the_record_lasts_until_the_last_token_it_covers_expires(self, revs: Make) -> None:
        """No accepted token lives longer than the max lifetime: the latest one issued before
        the cut-off is accepted until cut-off + lifetime + leeway, and refused until then."""
        r = await revs(ttl_s=60, leeway_s=2)
        latest = token(iat=999, exp=999 + 60)
        await r.revoke("alice", at=1000.0)
        assert await r.refused(latest)
        await r.lapse(user="alice", revoked_at=1000.0, until=1062.0, probe=latest)
        assert not await r.refused(token(iat=1001, exp=1100))


class TestJti:
    async def test_a_jti_names_one_token(self, revs: Make) -> None:
        r = await revs(ttl_s=5)
        await r.revoke("alice", "t-1", at=1000.0)
        assert await r.refused(token(iat=1000, jti="t-1"))
        assert await r.refused(token(iat=None, jti="t-1"))
        assert await r.refused(token(iat=1000, jti="t-1", user="bob"))  # the token, whoever presents it
        assert not await r.refused(token(iat=999, jti="t-2"))  # not the user's other tokens
        assert not await r.refused(token(iat=999))

    async def test_without_exp_the_record_lasts_the_max_lifetime_and_leeway(self, revs: Make) -> None:
        r = await revs(ttl_s=5, leeway_s=2)
        await r.revoke("alice", "plain", at=1000.0)
        await r.lapse(jti="plain", revoked_at=1000.0, until=1007.0, probe=token(iat=1000, exp=1005, jti="plain"))

    async def test_with_exp_the_record_lasts_until_that_tokens_exp_and_leeway(self, revs: Make) -> None:
        """Longer than the max lifetime (the token may have been accepted under a larger one),
        never shorter."""
        r = await revs(ttl_s=5, leeway_s=2)
        await r.revoke("alice", "long", at=1000.0, exp=4600.0)
        await r.revoke("alice", "short", at=1000.0, exp=1001.0)
        await r.lapse(jti="short", revoked_at=1000.0, until=1007.0, probe=token(iat=996, exp=1001, jti="short"))
        await r.lapse(jti="long", revoked_at=1000.0, until=4602.0, probe=token(iat=1000, exp=4600, jti="long"))

    async def test_a_second_revocation_never_shortens_the_record(self, revs: Make) -> None:
        r = await revs(ttl_s=5)
        await r.revoke("alice", "long", at=1000.0, exp=4600.0)
        await r.revoke("alice", "long", at=1001.0)  # without exp: would keep it until 1006
        await r.lapse(jti="long", revoked_at=1000.0, until=4600.0, probe=token(iat=1000, exp=4600, jti="long"))

    async def test_a_second_revocation_with_a_later_exp_lengthens_it(self, revs: Make) -> None:
        r = await revs(ttl_s=5)
        await r.revoke("alice", "t", at=1000.0, exp=2000.0)
        await r.revoke("alice", "t", at=1001.0, exp=3000.0)
        await r.lapse(jti="t", revoked_at=1001.0, until=3000.0, probe=token(iat=1000, exp=3000, jti="t"))


class TestDefaultsAndFloors:
    async def test_no_leeway_unless_given(self, redis_server: Any, redis_prefix: str) -> None:
        clock, keys = Clock(START), Keys(redis_prefix)
        memory = MemoryRevocations(ttl_s=10, clock=clock)
        await memory.revoke("alice", None, START)
        clock.now = START + 10 - 0.001
        assert await memory.is_revoked(token(START - 1))
        clock.now = START + 10
        assert not await memory.is_revoked(token(START - 1))
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            await RedisRevocations(redis, keys, ttl_s=10).revoke("alice", None, START)
            assert 9_000 < await redis.pttl(keys.revoked_user("alice")) <= 10_000
        finally:
            await redis.aclose()

    async def test_a_record_is_kept_a_second_at_least(self, redis_server: Any, redis_prefix: str) -> None:
        keys = Keys(redis_prefix)
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        try:
            store = RedisRevocations(redis, keys, ttl_s=0.25)
            await store.revoke("alice", None, START)
            await store.revoke("alice", "j-1", START)
            for key in (keys.revoked_user("alice"), keys.revoked_jti("j-1")):
                assert 900 < await redis.pttl(key) <= 1000
        finally:
            await redis.aclose()
