"""The event budget belongs to the user: it survives reconnects, here and on another instance."""

from __future__ import annotations

from gamegw.server.guard.limits import Bucket, UserBudgets


def spend(budgets: UserBudgets, user: str, now: float, n: int, stored: tuple[float, float, float] | None = None
          ) -> int:
    budget = budgets.acquire(user, now, stored)
    return sum(budget.events.take(now) for _ in range(n))


def test_a_reconnect_on_the_same_instance_does_not_refill():
    budgets = UserBudgets(rate=5, burst=10, abuse_max=0, abuse_window_s=0)
    assert spend(budgets, "u", 100.0, 50) == 10
    budgets.release("u", 100.0)
    assert spend(budgets, "u", 100.0, 50) == 0  # a new connection, the same budget
    budgets.release("u", 100.0)
    assert spend(budgets, "u", 101.0, 50) == 5  # one second later: rate tokens


def test_the_snapshot_carries_the_budget_to_another_instance():
    here, there = UserBudgets(5, 10, 100, 10.0), UserBudgets(5, 10, 100, 10.0)
    assert spend(here, "u", 100.0, 10) == 10
    kept = here.release("u", 100.0)
    assert kept is not None
    snapshot, refill_s = kept
    assert snapshot[0] == 0.0 and snapshot[2] == 100.0
    assert refill_s == 2.0  # 10 tokens at 5 a second
    assert spend(there, "u", 100.4, 50, stored=snapshot) == 2
    # the lower of the two wins: a stale, fuller snapshot does not refill a budget spent here
    there.release("u", 100.4)
    assert spend(there, "u", 100.4, 50, stored=(10.0, 100.0, 100.4)) == 0


def test_the_abuse_counter_travels_too():
    here = UserBudgets(1, 1, abuse_max=3, abuse_window_s=30.0)
    budget = here.acquire("u", 0.0, None)
    assert budget.abuse is not None
    assert [budget.abuse.take(0.0) for _ in range(4)] == [True, True, True, False]
    kept = here.release("u", 0.0)
    assert kept is not None
    there = UserBudgets(1, 1, abuse_max=3, abuse_window_s=30.0)
    again = there.acquire("u", 0.0, kept[0])
    assert again.abuse is not None and not again.abuse.take(0.0)
    assert kept[1] == 30.0  # the abuse bucket takes a whole window to refill


def test_a_full_budget_is_not_kept_and_is_forgotten():
    budgets = UserBudgets(5, 10, 0, 0)
    spend(budgets, "u", 0.0, 1)
    assert budgets.release("u", 10.0) is None  # refilled by then: nothing to keep
    budgets.prune(10.0)
    assert len(budgets) == 0
    spend(budgets, "v", 0.0, 10)
    assert budgets.release("v", 0.0) is not None
    budgets.prune(0.5)
    assert len(budgets) == 1  # still spent: kept until refilled
    budgets.prune(2.0)
    assert len(budgets) == 0


def test_connections_of_one_user_share_the_budget():
    budgets = UserBudgets(5, 10, 0, 0)
    first = budgets.acquire("u", 0.0, None)
    second = budgets.acquire("u", 0.0, None)
    assert first is second
    assert sum(first.events.take(0.0) for _ in range(6)) + sum(second.events.take(0.0) for _ in range(6)) == 10
    assert budgets.release("u", 0.0) is None  # the other connection still holds it
    assert budgets.release("u", 0.0) is not None


def test_bucket_level_and_lower_to():
    b = Bucket(2, 10, 0.0)
    assert [b.take(0.0) for _ in range(10)].count(True) == 10
    assert b.level(1.0) == 2.0 and b.level(100.0) == 10.0
    b.lower_to(5.0, 1.0, 2.0)  # the other had 5 at t=1: 7 at t=2; this one has 4 at t=2
    assert b.tokens == 4.0 and b.stamp == 2.0
    b.lower_to(0.0, 2.0, 2.0)
    assert b.tokens == 0.0


def test_enabled_from_a_rate_above_0():
    assert [UserBudgets(rate, 10, 0, 0).enabled for rate in (0, 0.5, 1)] == [False, True, True]


def test_an_abuse_bucket_needs_a_count_and_a_window():
    assert UserBudgets(5, 10, abuse_max=0, abuse_window_s=10.0).acquire("u", 0.0, None).abuse is None
    assert UserBudgets(5, 10, abuse_max=3, abuse_window_s=0).acquire("u", 0.0, None).abuse is None
    abuse = UserBudgets(5, 10, abuse_max=1, abuse_window_s=1.0).acquire("u", 0.0, None).abuse
    assert abuse is not None and (abuse.rate, abuse.burst) == (1.0, 1)


def test_a_new_budget_is_not_limited():
    assert UserBudgets(5, 10, 3, 30.0).acquire("u", 0.0, None).limited is False


def test_a_snapshot_without_an_abuse_bucket_keeps_0_for_it():
    budgets = UserBudgets(5, 10, 0, 0)
    spend(budgets, "u", 0.0, 4)
    assert budgets.release("u", 0.0) == ((6.0, 0.0, 0.0), 0.8)  # 4 tokens at 5 a second


def test_both_buckets_full_is_nothing_to_keep():
    budgets = UserBudgets(5, 10, 3, 30.0)
    budgets.acquire("u", 0.0, None)
    assert budgets.release("u", 0.0) is None


def test_a_budget_held_by_a_connection_is_not_pruned():
    budgets = UserBudgets(5, 10, 0, 0)
    held = budgets.acquire("u", 0.0, None)  # full, but a connection holds it
    budgets.prune(10.0)
    assert budgets.acquire("u", 10.0, None) is held
    assert budgets.release("u", 10.0) is None  # one of its two connections ends: still held
    budgets.prune(20.0)
    assert budgets.acquire("u", 20.0, None) is held


def test_a_budget_taken_again_after_its_last_release_is_not_pruned():
    """prune looks only at users whose last connection ended: one who came back holds the
    budget again (and a user forgotten once is not looked at again)."""
    budgets = UserBudgets(5, 10, 0, 0)
    spend(budgets, "u", 0.0, 10)
    assert budgets.release("u", 0.0) is not None
    held = budgets.acquire("u", 0.0, None)
    spend(budgets, "v", 0.0, 10)
    assert budgets.release("v", 0.0) is not None
    budgets.prune(10.0)
    budgets.prune(20.0)
    assert len(budgets) == 1 and budgets.acquire("u", 20.0, None) is held
    assert budgets.release("u", 20.0) is None and budgets.release("u", 20.0) is None
    budgets.prune(20.0)
    assert len(budgets) == 0
