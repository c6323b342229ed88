"""The figures the heartbeat and the dashboard report: rates and the move p99 between two
samples, and the process's CPU over the same window (time mocked, the metrics real)."""

from __future__ import annotations

from gamegw.server.metrics import Metrics, Sampler, p99_ms


def test_p99_is_the_bucket_of_what_was_added_between_two_samples() -> None:
    before = [(0.001, 100.0), (0.01, 100.0), (0.1, 100.0), (float("inf"), 100.0)]
    after = [(0.001, 100.0), (0.01, 199.0), (0.1, 200.0), (float("inf"), 200.0)]
    assert p99_ms(before, after) == 10.0  # 99 of the 100 new ones took under 10 ms
    assert p99_ms(after, after) is None  # nothing new
    slow = [(0.001, 100.0), (0.01, 100.0), (0.1, 100.0), (float("inf"), 110.0)]
    assert p99_ms(before, slow) == 100.0  # past the last bound: the last finite one


def test_sampler_rates_and_cpu_over_its_own_window() -> None:
    metrics = Metrics()
    now, cpu = [100.0], [5.0]
    sampler = Sampler(metrics, clock=lambda: now[0], cpu=lambda: cpu[0])
    for _ in range(30):
        metrics.moves.inc()
        metrics.for_event("move")[1].observe(0.002)
    metrics.deliveries.inc(90)
    metrics.connects.inc(3)
    now[0], cpu[0] = 102.0, 5.5
    assert sampler.rates() == {"connects_s": 1.5, "moves_s": 15.0, "deliveries_s": 45.0, "move_p99_ms": 2.5}
    figures = sampler.process()
    assert figures["cpu_pct"] == 25.0 and figures["rss_bytes"] > 1_000_000
    now[0] = 103.0
    assert sampler.rates() == {"connects_s": 0.0, "moves_s": 0.0, "deliveries_s": 0.0, "move_p99_ms": None}
    assert sampler.process()["cpu_pct"] == 0.0
