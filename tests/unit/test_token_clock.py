"""Token expiry's timers (server/auth/expiry.py) on a fast-forwarded event loop (looptime): the
loop's clock jumps to the next timer whenever nothing else is ready, so no test waits for real."""

from __future__ import annotations

import asyncio

import pytest

from gamegw.server.auth.expiry import TokenClock

pytestmark = pytest.mark.looptime(start=1000)


class Recorder:
    """The connection's actions, with the loop time each ran at."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, float]] = []

    def action(self, name: str):
        async def run(sid: str, exp: float) -> None:
            self.calls.append((name, sid, exp, asyncio.get_running_loop().time()))
        return run


def token_clock(recorder: Recorder, *, warn_s: float = 30, leeway_s: float = 5) -> TokenClock:
    loop = asyncio.get_running_loop()
    return TokenClock(warn_s=warn_s, leeway_s=leeway_s, clock=loop.time,
                      on_warn=recorder.action("warn"), on_expire=recorder.action("expire"))


async def test_warns_warn_s_before_exp_and_expires_leeway_s_after() -> None:
    recorder = Recorder()
    clock = token_clock(recorder)
    clock.arm("s1", exp=1100)
    await asyncio.sleep(200)
    assert recorder.calls == [("warn", "s1", 1100, 1070), ("expire", "s1", 1100, 1105)]


async def test_a_refresh_moves_both_deadlines() -> None:
    recorder = Recorder()
    clock = token_clock(recorder)
    clock.arm("s1", exp=1100)
    await asyncio.sleep(80)  # warned at 1070
    clock.arm("s1", exp=1500)  # a refresh
    assert clock.armed_for("s1") == 1500
    await asyncio.sleep(1000)
    assert recorder.calls == [("warn", "s1", 1100, 1070), ("warn", "s1", 1500, 1470), ("expire", "s1", 1500, 1505)]


async def test_a_token_already_inside_its_warning_is_warned_at_once() -> None:
    recorder = Recorder()
    clock = token_clock(recorder)
    clock.arm("s1", exp=1010)
    await asyncio.sleep(100)
    assert recorder.calls == [("warn", "s1", 1010, 1000), ("expire", "s1", 1010, 1015)]


async def test_disarm_and_aclose_cancel_everything() -> None:
    recorder = Recorder()
    clock = token_clock(recorder)
    clock.arm("s1", exp=1100)
    clock.arm("s2", exp=1200)
    clock.arm("s3", exp=1300)
    clock.disarm("s1")
    assert (clock.armed_for("s1"), clock.armed_for("s2")) == (None, 1200)
    await asyncio.sleep(180)  # s2 warned at 1170
    clock.aclose()
    assert clock.armed_for("s2") is None
    await asyncio.sleep(1000)
    assert recorder.calls == [("warn", "s2", 1200, 1170)]
