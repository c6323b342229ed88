"""Game rules and the memory room store, without any I/O.

The registry's suite, which every implementation must pass, is in
``tests/integration/test_registry.py``.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gamegw.server.protocol.codes import AckCode
from gamegw.server.protocol.errors import ActionError
from gamegw.server.rules import Arena, GameRules, Relay, make_rules
from gamegw.server.state.rooms import MemoryRoomStore, MoveEvent
from tests.conftest import make_settings


def assert_code(info: pytest.ExceptionInfo[ActionError], code: AckCode) -> None:
    assert info.value.code == code
    ack = info.value.ack()
    assert ack["ok"] is False
    assert ack["error"]["code"] == str(code)
    assert isinstance(ack["error"]["message"], str) and ack["error"]["message"]


# -- rules: relay ------------------------------------------------------------------------------


def test_make_rules_picks_the_configured_game() -> None:
    relay = make_rules(make_settings())
    assert isinstance(relay, GameRules) and isinstance(relay.game, Relay) and relay.stateless_moves
    arena = make_rules(make_settings(game="arena", arena_width=5, arena_height=4))
    assert isinstance(arena, GameRules) and isinstance(arena.game, Arena)
    assert (arena.game.width, arena.game.height) == (5, 4)
    assert (arena.name, arena.tick_s, arena.stateless_moves) == ("arena", 0.0, False)


def test_relay_accepts_any_object() -> None:
    rules = Relay()
    state = rules.initial_state()
    rules.on_join(state, "alice")
    rules.on_join(state, "bob")
    rules.on_join(state, "alice")
    assert state["players"] == ["alice", "bob"]
    action = {"anything": [1, 2, {"nested": True}]}
    assert rules.apply(state, "alice", action) == {"anything": [1, 2, {"nested": True}]}
    assert rules.apply(state, "bob", {}) == {}
    assert state["players"] == ["alice", "bob"]
    rules.on_leave(state, "alice")
    rules.on_leave(state, "alice")
    assert state["players"] == ["bob"]


def test_relay_initial_states_are_independent() -> None:
    rules = Relay()
    pristine = copy.deepcopy(rules.initial_state())
    a = rules.initial_state()
    rules.on_join(a, "alice")
    assert rules.initial_state() == pristine
    assert "alice" not in rules.initial_state()["players"]


# -- rules: arena ------------------------------------------------------------------------------


def test_arena_seats_players_in_reading_order() -> None:
    rules = Arena(width=3, height=2)
    state = rules.initial_state()
    assert state == {"width": 3, "height": 2, "players": {}}
    for user in ("a", "b", "c", "d"):
        rules.on_join(state, user)
    assert state["players"] == {"a": [0, 0], "b": [1, 0], "c": [2, 0], "d": [0, 1]}
    rules.on_join(state, "a")  # joining again keeps the seat
    assert state["players"]["a"] == [0, 0]


def test_arena_reuses_a_freed_seat() -> None:
    rules = Arena(width=2, height=2)
    state = rules.initial_state()
    for user in ("a", "b", "c"):
        rules.on_join(state, user)
    rules.on_leave(state, "a")
    assert "a" not in state["players"]
    rules.on_join(state, "d")
    assert state["players"]["d"] == [0, 0]


@pytest.mark.parametrize(("direction", "pos"), [("right", [2, 1]), ("left", [0, 1]), ("up", [1, 0]),
                                                ("down", [1, 2])])
def test_arena_steps_one_cell(direction: str, pos: list[int]) -> None:
    rules = Arena(width=3, height=3)
    state = rules.initial_state()
    rules.on_join(state, "a")
    state["players"]["a"] = [1, 1]
    assert rules.apply(state, "a", {"dir": direction}) == {"dir": direction, "pos": pos}
    assert state["players"]["a"] == pos


def test_arena_walks_to_the_far_corner_and_no_further() -> None:
    rules = Arena(width=4, height=3)
    state = rules.initial_state()
    rules.on_join(state, "a")
    for _ in range(3):
        rules.apply(state, "a", {"dir": "right"})
    for _ in range(2):
        rules.apply(state, "a", {"dir": "down"})
    assert state["players"]["a"] == [3, 2]
    for direction in ("right", "down"):
        with pytest.raises(ActionError) as info:
            rules.apply(state, "a", {"dir": direction})
        assert_code(info, AckCode.INVALID_ACTION)
    assert state["players"]["a"] == [3, 2]


@pytest.mark.parametrize("direction", ["up", "left"])
def test_arena_refuses_a_step_off_the_grid(direction: str) -> None:
    rules = Arena(width=3, height=3)
    state = rules.initial_state()
    rules.on_join(state, "a")  # seated at [0, 0]
    before = copy.deepcopy(state)
    with pytest.raises(ActionError) as info:
        rules.apply(state, "a", {"dir": direction})
    assert_code(info, AckCode.INVALID_ACTION)
    assert state == before


def test_arena_refuses_an_occupied_cell() -> None:
    rules = Arena(width=3, height=3)
    state = rules.initial_state()
    rules.on_join(state, "a")  # [0, 0]
    rules.on_join(state, "b")  # [1, 0]
    before = copy.deepcopy(state)
    with pytest.raises(ActionError) as info:
        rules.apply(state, "a", {"dir": "right"})
    assert_code(info, AckCode.INVALID_ACTION)
    with pytest.raises(ActionError) as info:
        rules.apply(state, "b", {"dir": "left"})
    assert_code(info, AckCode.INVALID_ACTION)
    assert state == before
    # Once b moves away, the cell is free.
    rules.apply(state, "b", {"dir": "down"})
    assert rules.apply(state, "a", {"dir": "right"}) == {"dir": "right", "pos": [1, 0]}


@pytest.mark.parametrize("action", [{}, {"dir": "north"}, {"dir": "UP"}, {"dir": 1}, {"dir": None},
                                    {"dir": "up", "speed": 2}, {"move": "up"}, {"dir": "up", "pos": [5, 5]},
                                    {"dir": ["up"]},
                                    {"dir": {"up": 1}}])
def test_arena_refuses_a_malformed_action(action: dict[str, Any]) -> None:
    rules = Arena(width=3, height=3)
    state = rules.initial_state()
    rules.on_join(state, "a")
    state["players"]["a"] = [1, 1]
    before = copy.deepcopy(state)
    with pytest.raises(ActionError) as info:
        rules.apply(state, "a", action)
    assert_code(info, AckCode.INVALID_ACTION)
    assert state == before


def test_arena_full_grid_is_room_full() -> None:
    rules = Arena(width=2, height=1)
    state = rules.initial_state()
    rules.on_join(state, "a")
    rules.on_join(state, "b")
    before = copy.deepcopy(state)
    with pytest.raises(ActionError) as info:
        rules.on_join(state, "c")
    assert_code(info, AckCode.ROOM_FULL)
    assert state == before
    rules.on_join(state, "a")  # a seated player is not refused


# -- room store --------------------------------------------------------------------------------


def relay_store(**kw: Any) -> MemoryRoomStore:
    return MemoryRoomStore(Relay(), **kw)


async def move(store: MemoryRoomStore, room: str, user_id: str, action: dict[str, Any], *, ts: int) -> MoveEvent:
    """A move as the gateway makes it: the action goes along already encoded."""
    return await store.move(room, user_id, action, orjson.dumps(action).decode(), ts)


async def test_join_reports_seq_members_and_first() -> None:
    store = relay_store()
    joined = await store.join("r", "alice", "s1")
    assert (joined.seq, joined.members, joined.first) == (0, ["alice"], True)
    joined = await store.join("r", "bob", "s2")
    assert (joined.seq, joined.members, joined.first) == (0, ["alice", "bob"], True)
    joined = await store.join("r", "alice", "s3")  # a second connection of alice
    assert (joined.members, joined.first) == (["alice", "bob"], False)
    await move(store, "r", "bob", {"x": 1}, ts=1)
    assert (await store.join("r", "carol", "s4")).seq == 1


async def test_seq_is_consecutive_per_room() -> None:
    store = relay_store()
    for user, sid in (("alice", "s1"), ("bob", "s2")):
        await store.join("r", user, sid)
    await store.join("other", "alice", "s1")
    seqs = [(await move(store, "r", user, {"i": i}, ts=1000 + i)).seq
            for i, user in enumerate(["alice", "bob"] * 5)]
    assert seqs == list(range(1, 11))
    assert (await move(store, "other", "alice", {}, ts=0)).seq == 1
    assert (await store.state("r"))[0] == 10


async def test_move_event_carries_the_move() -> None:
    store = relay_store()
    await store.join("r", "alice", "s1")
    event = await move(store, "r", "alice", {"x": 1}, ts=1234)
    assert event.seq == 1
    assert event.wire() == {"room": "r", "seq": 1, "user": "alice", "action": {"x": 1}, "ts": 1234}


async def test_move_outside_the_room_is_not_in_room() -> None:
    store = relay_store()
    with pytest.raises(ActionError) as info:
        await move(store, "nowhere", "alice", {}, ts=0)
    assert_code(info, AckCode.NOT_IN_ROOM)
    await store.join("r", "bob", "s2")
    with pytest.raises(ActionError) as info:
        await move(store, "r", "alice", {}, ts=0)
    assert_code(info, AckCode.NOT_IN_ROOM)
    assert info.value.message == "not in room 'r'"
    assert (await store.state("r"))[0] == 0


async def test_log_is_bounded() -> None:
    store = relay_store(log_size=3)
    await store.join("r", "alice", "s1")
    for i in range(5):
        await move(store, "r", "alice", {"i": i}, ts=i)
    events, complete = await store.events_after("r", 0)
    assert [e.seq for e in events] == [3, 4, 5]
    assert [e.wire()["action"] for e in events] == [{"i": 2}, {"i": 3}, {"i": 4}]
    assert complete is False


async def test_the_default_log_keeps_1000_moves_and_a_room_100_members() -> None:
    store = relay_store()
    for i in range(100):
        await store.join("r", f"u{i}", f"s{i}")
    with pytest.raises(ActionError) as info:
        await store.join("r", "one-too-many", "s-last")
    assert_code(info, AckCode.ROOM_FULL)
    for i in range(1001):
        await move(store, "r", "u0", {"i": i}, ts=i)
    events, complete = await store.events_after("r", 0)
    assert (events[0].seq, len(events), complete) == (2, 1000, False)


async def test_a_log_of_size_0_never_has_what_a_client_missed() -> None:
    store = relay_store(log_size=0)
    await store.join("r", "alice", "s1")
    await move(store, "r", "alice", {}, ts=0)
    assert await store.events_after("r", 0) == ([], False)
    assert await store.events_after("r", 1) == ([], True)


@pytest.mark.parametrize(("after", "seqs", "complete"), [
    (0, [3, 4, 5], False),   # moves 1 and 2 fell off the log
    (1, [3, 4, 5], False),   # move 2 fell off the log
    (2, [3, 4, 5], True),    # exactly the log
    (3, [4, 5], True),
    (4, [5], True),
    (5, [], True),           # up to date
    (9, [], True),           # ahead of the room
])
async def test_events_after(after: int, seqs: list[int], complete: bool) -> None:
    store = relay_store(log_size=3)
    await store.join("r", "alice", "s1")
    for i in range(5):
        await move(store, "r", "alice", {"i": i}, ts=i)
    events, got_complete = await store.events_after("r", after)
    assert [e.seq for e in events] == seqs
    assert got_complete is complete


async def test_events_after_with_a_log_that_reaches_back() -> None:
    store = relay_store(log_size=100)
    await store.join("r", "alice", "s1")
    assert await store.events_after("r", 0) == ([], True)
    for i in range(5):
        await move(store, "r", "alice", {"i": i}, ts=i)
    events, complete = await store.events_after("r", 0)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and complete is True


async def test_events_after_for_an_unknown_room() -> None:
    assert await relay_store().events_after("nowhere", 0) == ([], True)


async def test_members_in_join_order() -> None:
    store = relay_store()
    assert await store.members("r") == []
    for user in ("carol", "alice", "bob"):
        await store.join("r", user, f"sid-{user}")
    assert await store.members("r") == ["carol", "alice", "bob"]
    assert await store.leave("r", "alice", "sid-alice") is True
    assert await store.members("r") == ["carol", "bob"]


async def test_leave_last_connection() -> None:
    store = relay_store()
    await store.join("r", "alice", "s1")
    await store.join("r", "alice", "s2")
    await store.join("r", "bob", "s3")
    assert await store.leave("r", "alice", "s1") is False
    assert await store.members("r") == ["alice", "bob"]
    assert (await store.state("r"))[1]["players"] == ["alice", "bob"]
    assert await store.leave("r", "alice", "s2") is True
    assert await store.members("r") == ["bob"]
    assert (await store.state("r"))[1]["players"] == ["bob"]
    assert await store.leave("r", "alice", "s2") is False  # already gone


async def test_leave_unknown() -> None:
    store = relay_store()
    assert await store.leave("nowhere", "alice", "s1") is False
    await store.join("r", "bob", "s2")
    assert await store.leave("r", "alice", "s1") is False
    assert await store.members("r") == ["bob"]


async def test_room_is_forgotten_when_empty() -> None:
    store = relay_store()
    await store.join("r", "alice", "s1")
    await store.join("r", "bob", "s2")
    await move(store, "r", "alice", {"x": 1}, ts=0)
    await store.leave("r", "alice", "s1")
    assert (await store.state("r"))[0] == 1  # still alive with bob in it
    await store.leave("r", "bob", "s2")
    assert await store.members("r") == []
    assert await store.state("r") == (0, Relay().initial_state())
    assert await store.events_after("r", 0) == ([], True)
    joined = await store.join("r", "carol", "s3")
    assert (joined.seq, joined.members) == (0, ["carol"])
    assert (await move(store, "r", "carol", {}, ts=0)).seq == 1


async def test_room_full_at_max_members() -> None:
    store = relay_store(max_members=2)
    await store.join("r", "alice", "s1")
    await store.join("r", "bob", "s2")
    with pytest.raises(ActionError) as info:
        await store.join("r", "carol", "s3")
    assert_code(info, AckCode.ROOM_FULL)
    assert info.value.message == "room 'r' has 2 members"
    assert await store.members("r") == ["alice", "bob"]
    assert (await store.state("r"))[1]["players"] == ["alice", "bob"]
    # A member's second connection takes no seat; another room is not affected.
    assert (await store.join("r", "alice", "s4")).first is False
    await store.join("other", "carol", "s3")
    # A seat freed is a seat taken.
    await store.leave("r", "bob", "s2")
    assert (await store.join("r", "carol", "s3")).members == ["alice", "carol"]


async def test_arena_room_full_when_the_grid_is_full() -> None:
    store = MemoryRoomStore(Arena(width=2, height=1))
    await store.join("r", "a", "s1")
    await store.join("r", "b", "s2")
    with pytest.raises(ActionError) as info:
        await store.join("r", "c", "s3")
    assert_code(info, AckCode.ROOM_FULL)
    assert await store.members("r") == ["a", "b"]


async def test_refused_move_takes_no_seq_and_keeps_the_state() -> None:
    store = MemoryRoomStore(Arena(width=3, height=3))
    await store.join("r", "a", "s1")  # [0, 0]
    await store.join("r", "b", "s2")  # [1, 0]
    assert (await move(store, "r", "a", {"dir": "down"}, ts=1)).wire()["action"] == {"dir": "down", "pos": [0, 1]}
    seq, state = await store.state("r")
    before = copy.deepcopy(state)
    for action in ({"dir": "left"}, {"dir": "north"}, {"dir": "up", "extra": 1}):
        with pytest.raises(ActionError) as info:
            await move(store, "r", "a", action, ts=2)
        assert_code(info, AckCode.INVALID_ACTION)
    with pytest.raises(ActionError) as info:
        await move(store, "r", "b", {"dir": "up"}, ts=2)
    assert_code(info, AckCode.INVALID_ACTION)
    assert await store.state("r") == (seq, before)
    events, _ = await store.events_after("r", 0)
    assert [e.seq for e in events] == [1]
    assert (await move(store, "r", "b", {"dir": "right"}, ts=3)).seq == 2


async def test_arena_state_frees_the_seat_of_a_player_who_left() -> None:
    store = MemoryRoomStore(Arena(width=3, height=3))
    await store.join("r", "a", "s1")
    await store.join("r", "b", "s2")
    await store.leave("r", "a", "s1")
    _, state = await store.state("r")
    assert state["players"] == {"b": [1, 0]}
    await store.join("r", "c", "s3")
    assert (await store.state("r"))[1]["players"]["c"] == [0, 0]
