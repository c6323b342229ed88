"""The per-address handshake limiter on an injected clock: a bucket per address, off at rate 0,
and a bound on the buckets it keeps: at the bound, the ones that have refilled are forgotten
(a full bucket says no more than a new one)."""

from __future__ import annotations

from gamegw.server.guard.limits import AddressLimiter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_each_address_has_a_bucket_of_its_own() -> None:
    clock = Clock(100.0)
    limiter = AddressLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    clock.now = 100.5  # one token back
    assert [limiter.allow("a") for _ in range(2)] == [True, False]


def test_rate_0_turns_it_off() -> None:
    limiter = AddressLimiter(rate=0, burst=0, clock=Clock(0.0))
    assert all(limiter.allow("a") for _ in range(50))


def test_at_the_bound_the_refilled_buckets_are_forgotten() -> None:
    clock = Clock(0.0)
    limiter = AddressLimiter(rate=2, burst=4, clock=clock, max_addresses=2)  # full 2 s after a take
    limiter.allow("a")
    clock.now = 1.0
    limiter.allow("b")
    clock.now = 2.0
    limiter.allow("c")  # two kept already: "a" has refilled (2 s), "b" has not
    assert sorted(limiter._buckets) == ["b", "c"]
    assert [limiter.allow("a") for _ in range(5)] == [True, True, True, True, False]  # a new, full bucket


def test_the_default_bound_is_100000_addresses() -> None:
    clock = Clock(0.0)
    limiter = AddressLimiter(rate=1000, burst=1, clock=clock)  # full 1 ms after a take
    for i in range(100_000):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    clock.now = 1.0
    limiter.allow("192.168.0.1")  # the 100001st: every other bucket has refilled
    assert list(limiter._buckets) == ["192.168.0.1"]
