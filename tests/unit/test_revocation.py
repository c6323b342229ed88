"""Token lifetime and revocation records, on an injected clock: a revoked token stays refused
until its own exp, because no accepted token outlives the record that revokes it."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gamegw.server.auth.revocation import MemoryRevocations
from gamegw.server.auth.tokens import Claims, Verifier
from gamegw.server.protocol.errors import AuthError
from tests.conftest import TEST_SECRET, make_settings


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", **claims}, TEST_SECRET, algorithm="HS256")


@pytest.mark.parametrize(("lifetime", "accepted"), [(60, True), (61, False), (3600, False)])
def test_tokens_living_longer_than_the_max_are_invalid(lifetime: int, accepted: bool) -> None:
    now = int(time.time())
    verifier = Verifier(make_settings(jwt_max_lifetime_s=60), clock=Clock(now))
    text = token(iat=now - 30, exp=now - 30 + lifetime)
    if accepted:
        assert verifier.verify(text).exp == now - 30 + lifetime
        return
    with pytest.raises(AuthError) as caught:
        verifier.verify(text)
    assert caught.value.refusal.name == "token_invalid"
    assert caught.value.detail == "the token lives longer than jwt_max_lifetime_s (60 s)"


@pytest.mark.parametrize(("ahead", "accepted"), [(60, True), (62, True), (63, False)])
def test_without_iat_a_token_is_dated_from_now_within_the_leeway(ahead: int, accepted: bool) -> None:
    now = int(time.time())
    verifier = Verifier(make_settings(jwt_max_lifetime_s=60, jwt_leeway_s=2), clock=Clock(now))
    text = token(exp=now + ahead)
    if accepted:
        assert verifier.verify(text).iat is None
    else:
        with pytest.raises(AuthError, match="lives longer than jwt_max_lifetime_s"):
            verifier.verify(text)


def claims(iat: float | None, exp: float, jti: str | None = None) -> Claims:
    return Claims(user_id="alice", exp=exp, iat=iat, jti=jti)


async def test_a_user_revocation_lasts_until_the_last_token_it_covers_expires() -> None:
    clock = Clock(1000.0)
    revocations = MemoryRevocations(ttl_s=60, leeway_s=2, clock=clock)
    latest = claims(iat=999, exp=999 + 60)  # the longest-lived token issued before the cut-off
    await revocations.revoke("alice", None, 1000.0)
    for now in (1000.0, 1050.0, 999 + 60 + 2 - 0.01):  # accepted until exp + leeway: refused until then
        clock.now = now
        assert await revocations.is_revoked(latest), now
    assert not await revocations.is_revoked(claims(iat=1001, exp=1100))  # issued after the cut-off
    clock.now = 1000 + 60 + 2
    assert not await revocations.is_revoked(latest)  # lapsed, once nothing it covers can be accepted


async def test_a_jti_revocation_lasts_until_that_tokens_exp_when_told() -> None:
    clock = Clock(1000.0)
    revocations = MemoryRevocations(ttl_s=5, leeway_s=0, clock=clock)
    long_lived = claims(iat=1000, exp=4600, jti="long")  # e.g. accepted by an instance with a larger max
    plain = claims(iat=1000, exp=1005, jti="plain")
    await revocations.revoke("alice", "long", 1000.0, exp=4600)
    await revocations.revoke("alice", "plain", 1000.0)
    await revocations.revoke("alice", "long", 1001.0)  # a second revocation without exp does not shorten it
    clock.now = 1006.5
    assert await revocations.is_revoked(long_lived)
    assert not await revocations.is_revoked(plain)
    clock.now = 4599.9
    assert await revocations.is_revoked(long_lived)
    clock.now = 4600.0
    assert not await revocations.is_revoked(long_lived)
