"""TokenClock: the warning and the close fire at the deadlines the injected clock puts them at, once."""

from __future__ import annotations

import asyncio

from gamegw.server.auth.expiry import TokenClock

NOW = 1_000.0


class Recorder:
    """The two actions, recording (what, sid, exp, loop seconds since the start) as they run."""

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
    rec = Recorder()
    clock = rec.clock(warn_s=0.2, leeway_s=0.1)
    clock.arm("s1", NOW + 0.3)  # warn at 0.1 s, close at 0.4 s, by the injected clock
    await asyncio.sleep(0.6)
    assert [(what, sid, exp) for what, sid, exp, _ in rec.fired] == [("warn", "s1", NOW + 0.3),
                                                                       ("expire", "s1", NOW + 0.3)]
    (_, _, _, warned), (_, _, _, expired) = rec.fired
    assert 0.1 <= warned < 0.25
    assert 0.4 <= expired < 0.55
    assert rec.errors == []


async def test_a_token_already_past_both_deadlines_fires_both_at_once():
    rec = Recorder()
    rec.clock().arm("s1", NOW - 60)
    await asyncio.sleep(0.05)
    assert [(what, sid, exp) for what, sid, exp, _ in rec.fired] == [("warn", "s1", NOW - 60),
                                                                       ("expire", "s1", NOW - 60)]


async def test_rearming_replaces_the_timers_and_disarm_cancels_them():
    rec = Recorder()
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
    rec = Recorder()
    clock = rec.clock(warn_s=0.0, leeway_s=0.0)
    for sid in ("s1", "s2", "s3"):
        clock.arm(sid, NOW + 0.05)
    clock.aclose()
    await asyncio.sleep(0.15)
    assert rec.fired == []
    clock.arm("s1", NOW + 0.02)  # still usable after: a fresh arm fires
    await asyncio.sleep(0.1)
    assert [what for what, *_ in rec.fired] == ["warn", "expire"]
