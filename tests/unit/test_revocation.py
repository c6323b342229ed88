"""Token lifetime on an injected clock (no accepted token outlives the record that revokes it;
the records themselves: tests/integration/test_revocation_store.py), and how long a user's
revocation waits before it returns."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
import pytest

from gamegw.server.auth.revocation import settle, settle_s
from gamegw.server.auth.tokens import Verifier
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


@pytest.mark.parametrize(("cut_off", "now", "wait_s"), [
    (1000.25, 1000.25, 0.75),  # until 1001: a token minted from then on says iat 1001, not below
    (1000.25, 1000.75, 0.25),
    (1000.25, 1001.0, 0.0),
    (1000.0, 1000.0, 0.0),  # a whole-second cut-off: a token minted now says iat 1000, not below
    (1000.25, 998.5, 1.0),  # a clock behind the cut-off: a second at most
])
def test_a_user_revocation_returns_at_the_next_whole_second(cut_off: float, now: float, wait_s: float) -> None:
    assert settle_s(cut_off, now) == wait_s


async def test_settle_returns_once_the_clock_reaches_the_next_whole_second() -> None:
    start = time.monotonic()
    clock = lambda: 1000.3 + (time.monotonic() - start)  # noqa: E731  (a clock that moves)
    await settle(1000.3, clock)
    assert clock() >= 1001.0
    assert 0.7 <= time.monotonic() - start < 0.95


async def test_settle_gives_up_on_a_clock_that_stands_still() -> None:
    start = time.monotonic()
    await settle(1000.3, lambda: 1000.3)  # 0.7 s sleeps until 1.5 s have passed: three of them
    assert 2.1 <= time.monotonic() - start < 2.4
    start = time.monotonic()
    await asyncio.wait_for(settle(1000.0, lambda: 1000.0), 0.1)  # a whole-second cut-off: at once
    assert time.monotonic() - start < 0.05
