"""GameManager's index of each connection's rooms (it finds them for a disconnect without testing
every room of the namespace, which cost O(connections) per disconnect) against python-socketio's
own room table, under random sequences of connects, joins, leaves, room closes and disconnects."""

from __future__ import annotations

import socketio
from hypothesis import given, settings
from hypothesis import strategies as st
from socketio.base_manager import BaseManager

from gamegw.server.transport.manager import GameManager

NS = "/game"
ROOMS = ["r0", "r1", "r2"]
step = st.tuples(st.sampled_from(["connect", "join", "leave", "close", "disconnect"]), st.integers(0, 5),
                 st.sampled_from(ROOMS))


def scanned(manager: GameManager, sid: str) -> set[str | None]:
    """The rooms ``sid`` is in, found as python-socketio does: by testing every room."""
    return {name for name, members in manager.rooms.get(NS, {}).items() if sid in members}


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_the_index_is_the_room_table(steps: list[tuple[str, int, str]]) -> None:
    manager = GameManager()
    socketio.AsyncServer(async_mode="aiohttp", client_manager=manager)
    sids: dict[int, str] = {}
    gone: list[str] = []
    for op, who, room in steps:
        sid = sids.get(who)
        if op == "connect" and sid is None:
            sids[who] = BaseManager.pre_connect(manager, f"eio-{who}-{len(gone)}", NS)  # the sync part
        elif sid is None:
            continue
        elif op == "join":
            manager.basic_enter_room(sid, NS, room)
        elif op == "leave":
            manager.basic_leave_room(sid, NS, room)
        elif op == "close":
            manager.basic_close_room(room, NS)
        elif op == "disconnect":
            manager.basic_disconnect(sid, NS)
            gone.append(sids.pop(who))
        for s in [*sids.values(), *gone]:
            assert set(manager._rooms_of.get((NS, s), ())) == scanned(manager, s)
            assert sorted(manager.get_rooms(s, NS)) == sorted(r for r in scanned(manager, s) if r is not None)
    for s in gone:
        assert (NS, s) not in manager._rooms_of and not scanned(manager, s)
    assert set(manager._rooms_of) == {(NS, s) for s in sids.values()}
