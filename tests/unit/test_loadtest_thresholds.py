"""`gamectl loadtest`'s thresholds at their edges: a run exactly at a threshold keeps it, the
smallest step above breaks it (issue 13). The end-to-end runs are in tests/cli/test_loadtest.py."""

from __future__ import annotations

import pytest

from gamegw.gamectl.loadtest import violations


def names(move_p99: float | None = 10.0, broadcast_p99: float | None = 12.0) -> dict[str, dict[str, float | None]]:
    return {"move": {"p99": move_p99}, "broadcast": {"p99": broadcast_p99}, "connect": {"p99": 900.0}}


def test_no_threshold_broken() -> None:
    assert violations(names(), 1000, 0, 0.0, None) == []


def test_failure_ratio_at_and_just_above_the_threshold() -> None:
    assert violations(names(), 1000, 10, 0.01, None) == []
    assert violations(names(), 1000, 11, 0.01, None) == ["failure ratio 0.0110 > --max-fail-ratio 0.01"]
    assert violations(names(), 1000, 1, 0.0, None) == ["failure ratio 0.0010 > --max-fail-ratio 0"]


@pytest.mark.parametrize("limit", [12.0, 12.5])
def test_p99_at_or_under_the_threshold_keeps_it(limit: float) -> None:
    assert violations(names(), 1000, 0, 0.0, limit) == []


def test_p99_just_above_the_threshold_breaks_it_for_gameplay_only() -> None:
    assert violations(names(), 1000, 0, 0.0, 11.99) == ["broadcast p99 12 ms > --max-p99-ms 11.99"]
    assert violations(names(), 1000, 0, 0.0, 9.5) == ["move p99 10 ms > --max-p99-ms 9.5",
                                                      "broadcast p99 12 ms > --max-p99-ms 9.5"]
    # connect's p99 (900 ms) is not gameplay: it never breaks --max-p99-ms
    assert violations(names(), 1000, 0, 0.0, 100) == []


def test_a_name_without_samples_breaks_nothing() -> None:
    assert violations(names(move_p99=None, broadcast_p99=None), 1000, 0, 0.0, 0) == []


def test_a_run_without_requests_fails() -> None:
    assert violations({}, 0, 0, 1.0, None) == ["no request was recorded"]
