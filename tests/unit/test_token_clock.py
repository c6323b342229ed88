"""Token expiry's timers (server/auth/expiry.py) on a fast-forwarded event loop (looptime): the
loop's clock jumps to the next timer whenever nothing else is ready, so no test waits for real."""

from __future__ import annotations

import asyncio

import pytest

from gamegw.server.auth.expiry import REBUILD_MIN, TokenClock

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


# The same timers by an injected clock standing still at NOW (tools/mutation: expiry.py's tests).

NOW = 1_000.0


class RecorderAt:
    """The two actions, recording (what, sid, exp, loop seconds since the start) as they run,
    and what the loop's timer callbacks raised."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.fired: list[tuple[str, str, float, float]] = []
        self.errors: list[dict[str, object]] = []  # what the loop's timer callbacks raised
        self.loop.set_exception_handler(lambda _, context: self.errors.append(context))

    def action(self, what: str):  # type: ignore[no-untyped-def]
        async def run(sid: str, exp: float) -> None:
            self.fired.append((what, sid, exp, self.loop.time() - self.start))
        return run

    def clock(self, warn_s: float = 0.2, leeway_s: float = 0.1) -> TokenClock:
        return TokenClock(warn_s=warn_s, leeway_s=leeway_s, clock=lambda: NOW,
                          on_warn=self.action("warn"), on_expire=self.action("expire"))


async def test_the_warning_comes_warn_s_before_exp_and_the_close_leeway_s_after():
    rec = RecorderAt()
    clock = rec.clock(warn_s=0.2, leeway_s=0.1)
    clock.arm("s1", NOW + 0.3)  # warn at 0.1 s, close at 0.4 s, by the injected clock
    await asyncio.sleep(0.6)
    assert [(what, sid, exp) for what, sid, exp, _ in rec.fired] == [("warn", "s1", NOW + 0.3),
                                                                       ("expire", "s1", NOW + 0.3)]
    (_, _, _, warned), (_, _, _, expired) = rec.fired
    assert (round(warned, 6), round(expired, 6)) == (0.1, 0.4)
    assert rec.errors == []


async def test_a_token_already_past_both_deadlines_fires_both_at_once():
    rec = RecorderAt()
    rec.clock().arm("s1", NOW - 60)
    await asyncio.sleep(0.05)
    assert [(what, sid, exp) for what, sid, exp, _ in rec.fired] == [("warn", "s1", NOW - 60),
                                                                       ("expire", "s1", NOW - 60)]


async def test_rearming_replaces_the_timers_and_disarm_cancels_them():
    rec = RecorderAt()
    clock = rec.clock(warn_s=0.05, leeway_s=0.0)
    clock.arm("s1", NOW + 0.1)
    clock.arm("s1", NOW + 0.3)  # a refresh: the first token's deadlines are gone
    clock.arm("s2", NOW + 0.1)
    clock.disarm("s2")
    clock.disarm("never-armed")
    await asyncio.sleep(0.45)
    assert [(what, sid, exp) for what, sid, exp, _ in rec.fired] == [("warn", "s1", NOW + 0.3),
                                                                       ("expire", "s1", NOW + 0.3)]


async def test_aclose_cancels_every_connection():
    rec = RecorderAt()
    clock = rec.clock(warn_s=0.0, leeway_s=0.0)
    for sid in ("s1", "s2", "s3"):
        clock.arm(sid, NOW + 0.05)
    clock.aclose()
    await asyncio.sleep(0.15)
    assert rec.fired == []
    clock.arm("s1", NOW + 0.02)  # still usable after: a fresh arm fires
    await asyncio.sleep(0.1)
    assert [what for what, *_ in rec.fired] == ["warn", "expire"]


async def test_every_connection_waits_under_one_timer_of_the_loop():
    """Two timers per connection held ~1.3 KB each connection's whole life: now one heap, one timer."""
    rec = RecorderAt()
    clock = rec.clock(warn_s=0.2, leeway_s=0.1)
    loop = asyncio.get_running_loop()

    def timers() -> int:
        return sum(1 for timer in loop._scheduled if not timer.cancelled())  # type: ignore[attr-defined]

    before = timers()
    for i in range(100):
        clock.arm(f"s{i}", NOW + 60 + i)
    assert timers() - before == 1
    clock.arm("early", NOW + 0.3)  # an earlier deadline moves the one timer, and still fires in time
    assert timers() - before == 1
    await asyncio.sleep(0.5)
    assert [(what, sid, round(at, 6)) for what, sid, _, at in rec.fired] == [("warn", "early", 0.1),
                                                                            ("expire", "early", 0.4)]
    clock.aclose()
    assert timers() == before  # nothing left to wake


async def test_deadlines_left_by_refreshes_and_disconnects_do_not_pile_up():
    """A refresh or a disconnect leaves its old deadlines in the heap; they are dropped once they
    outnumber the live ones, so churn cannot grow it without bound."""
    rec = RecorderAt()
    clock = rec.clock()
    for i in range(100):
        clock.arm(f"s{i}", NOW + 3600)
    sizes = []
    for n in range(50):  # 5,000 refreshes, then 5,000 connections come and go
        for i in range(100):
            clock.arm(f"s{i}", NOW + 3600 + n)
            clock.arm(f"gone{n}-{i}", NOW + 3600)
            clock.disarm(f"gone{n}-{i}")
            sizes.append(clock.deadlines)
    # rebuilt once past 2 x REBUILD_MIN + 4 per live connection (99 to 101 of them here): not
    # sooner (each rebuild costs a pass over the heap), not later
    assert 2 * REBUILD_MIN + 4 * 99 <= max(sizes) <= 2 * REBUILD_MIN + 4 * 101 + 2
    assert min(sizes[1000:]) <= 2 * 101 + 2  # and a rebuild keeps the live ones only
    assert clock.armed_for("s7") == NOW + 3600 + 49
    await asyncio.sleep(3700)  # the live ones fire once each, at their last token's deadlines
    fired = sorted((what, sid, exp) for what, sid, exp, _ in rec.fired)
    assert fired == sorted((what, f"s{i}", NOW + 3600 + 49) for what in ("warn", "expire") for i in range(100))
    assert clock.deadlines == 0
