"""Rooms: membership, per-room sequence numbers, the bounded move log and the game state.

A room's ``seq`` starts at 0 and grows by one per accepted move, with no gaps; the store
assigns it while it applies the move, so that the order of ``seq`` is the order in which the
rules saw the moves. A server event (``publish``) takes a ``seq`` and a place in the log too,
but the rules never see it. The log keeps the last ``move_log_size`` moves for ``sync`` and replay.
A room lives while it has members and is forgotten when the last one leaves.

Membership belongs to sessions, not connections: a dropped player keeps its seat through
grace. ``attach``/``detach`` say which of this instance's connections receive the room's
events (in cluster mode they decide which instances the room's events are published to).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

import orjson

from ..protocol.codes import AckCode
from ..protocol.errors import ActionError
from ..rules import Rules, State

# the ``user`` of a ticked move: no player made it (a user id is a JWT ``sub``, never empty)
SERVER_USER = ""


@dataclass(frozen=True, slots=True)
class MoveEvent:
    """An accepted move: its ``seq`` and the ``move`` payload as JSON text.

    The payload ``{"room", "seq", "user", "action", "ts"}`` is encoded once, when the move is
    accepted, and that text is what the log keeps, what crosses instances and what every
    recipient's packet is made of.
    """

    seq: int
    json: str

    def wire(self) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(self.json)
        return payload


def move_json(room: str, seq: int, user_id: str, action_json: str, ts: int) -> str:
    """The ``move`` payload as JSON text (``ts`` in milliseconds since the epoch)."""
    return move_prefix(room) + str(seq) + move_suffix(user_id, action_json, ts)


def move_prefix(room: str) -> str:
    return '{"room":' + orjson.dumps(room).decode() + ',"seq":'


def move_suffix(user_id: str, action_json: str, ts: int) -> str:
    return ',"user":' + orjson.dumps(user_id).decode() + ',"action":' + action_json + ',"ts":' + str(ts) + "}"


@dataclass(frozen=True, slots=True)
class Joined:
    seq: int
    members: list[str]
    first: bool  # the user was not in the room before (through another connection)


class RoomStore(Protocol):
    async def join(self, room: str, user_id: str, member_id: str) -> Joined:
        """Seat a session (``member_id``) of the user; the rules hear of the user's first one."""
        ...

    async def leave(self, room: str, user_id: str, member_id: str) -> bool:
        """Unseat one session; True when the user has none left in the room."""
        ...

    async def sweep(self, exists: Callable[[str], Awaitable[bool]]) -> list[tuple[str, str, bool]]:
        """Unseat every session (``member_id``) that no longer exists; (room, user, the user's
        last seat) for each seat removed."""
        ...

    async def attach(self, room: str, sid: str) -> None:
        """This instance's connection ``sid`` receives the room's events from now on."""
        ...

    async def detach(self, room: str, sid: str) -> None: ...

    async def seq(self, room: str) -> int: ...

    async def members(self, room: str) -> list[str]: ...

    async def move(self, room: str, user_id: str, action: dict[str, Any], action_json: str, ts: int) -> MoveEvent:
        """Check the action with the rules, give it the room's next seq and log it.

        ``action_json`` is ``action`` already encoded (the gateway measured its size with it).
        """
        ...

    async def publish(self, room: str, user_id: str, action_json: str, ts: int) -> MoveEvent | None:
        """A server event (``POST /admin/publish``): a move from ``user_id`` (the publisher), who
        need not be a member, with the room's next seq, logged and routed as any move. The rules
        neither see it nor change the state for it. None when the room has no members (no room)."""
        ...

    async def events_after(self, room: str, after_seq: int) -> tuple[list[MoveEvent], bool]:
        """Moves with ``seq > after_seq``; False when the log no longer reaches back that far."""
        ...

    def local_rooms(self) -> list[str]:
        """The rooms this instance may tick: those with members connected here."""
        ...

    async def claim_tick(self, room: str, ttl_ms: int) -> bool:
        """Take or renew this instance's lease on ticking ``room``; False while another holds it."""
        ...

    async def release_tick(self, room: str) -> None:
        """Give the lease up (if this instance holds it), so that another takes over at once."""
        ...

    async def tick(self, room: str, now: float, ts: int) -> list[MoveEvent]:
        """Advance the room with the rules' ``tick``: each action returned becomes a move of
        :data:`SERVER_USER` with the room's next seq. Nothing when the lease is no longer ours
        or the room is gone."""
        ...

    async def state(self, room: str) -> tuple[int, State]: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass
class _Room:
    state: State
    log: deque[MoveEvent]
    seq: int = 0
    members: dict[str, set[str]] = field(default_factory=dict)  # user_id -> member ids (sessions)


class MemoryRoomStore:
    """One process's rooms. Methods never await, so each runs atomically on the event loop."""

    def __init__(self, rules: Rules, *, log_size: int = 1000, max_members: int = 100) -> None:
        self._rules = rules
        self._log_size = log_size
        self._max_members = max_members
        self._rooms: dict[str, _Room] = {}

    async def join(self, room: str, user_id: str, member_id: str) -> Joined:
        r = self._rooms.get(room)
        if r is None:
            r = _Room(state=self._rules.initial_state(), log=deque(maxlen=self._log_size))
        first = user_id not in r.members
        if first:
            if len(r.members) >= self._max_members:
                raise ActionError(AckCode.ROOM_FULL, f"room {room!r} has {self._max_members} members")
            self._rules.on_join(r.state, user_id)
            r.members[user_id] = set()
        r.members[user_id].add(member_id)
        self._rooms[room] = r
        return Joined(seq=r.seq, members=list(r.members), first=first)

    async def leave(self, room: str, user_id: str, member_id: str) -> bool:
        r = self._rooms.get(room)
        if r is None or user_id not in r.members:
            return False
        ids = r.members[user_id]
        ids.discard(member_id)
        if ids:
            return False
        del r.members[user_id]
        self._rules.on_leave(r.state, user_id)
        if not r.members:
            del self._rooms[room]
        return True

    async def sweep(self, exists: Callable[[str], Awaitable[bool]]) -> list[tuple[str, str, bool]]:
        removed = []
        for room, r in list(self._rooms.items()):
            for user_id, ids in list(r.members.items()):
                for member_id in sorted(ids):
                    if not await exists(member_id):
                        removed.append((room, user_id, await self.leave(room, user_id, member_id)))
        return removed

    async def members(self, room: str) -> list[str]:
        r = self._rooms.get(room)
        return list(r.members) if r else []

    async def attach(self, room: str, sid: str) -> None:
        return None  # one instance: the socket.io room is all the routing there is

    async def detach(self, room: str, sid: str) -> None:
        return None

    async def seq(self, room: str) -> int:
        r = self._rooms.get(room)
        return r.seq if r else 0

    async def move(self, room: str, user_id: str, action: dict[str, Any], action_json: str, ts: int) -> MoveEvent:
        r = self._rooms.get(room)
        if r is None or user_id not in r.members:
            raise ActionError(AckCode.NOT_IN_ROOM, f"not in room {room!r}")
        applied = self._rules.apply(r.state, user_id, action)
        if applied is not action:
            action_json = orjson.dumps(applied).decode()
        r.seq += 1
        event = MoveEvent(r.seq, move_json(room, r.seq, user_id, action_json, ts))
        r.log.append(event)
        return event

    async def publish(self, room: str, user_id: str, action_json: str, ts: int) -> MoveEvent | None:
        r = self._rooms.get(room)
        if r is None:
            return None
        r.seq += 1
        event = MoveEvent(r.seq, move_json(room, r.seq, user_id, action_json, ts))
        r.log.append(event)
        return event

    async def events_after(self, room: str, after_seq: int) -> tuple[list[MoveEvent], bool]:
        r = self._rooms.get(room)
        if r is None or after_seq >= r.seq:
            return [], True
        if not r.log:
            return [], False
        first = r.log[0].seq
        start = max(0, after_seq + 1 - first)
        events = list(islice(r.log, start, None))
        return events, first <= after_seq + 1

    async def state(self, room: str) -> tuple[int, State]:
        r = self._rooms.get(room)
        if r is None:
            return 0, self._rules.initial_state()
        return r.seq, r.state

    def local_rooms(self) -> list[str]:
        return list(self._rooms)

    async def claim_tick(self, room: str, ttl_ms: int) -> bool:
        return room in self._rooms  # one instance: it ticks every room there is

    async def release_tick(self, room: str) -> None:
        return None

    async def tick(self, room: str, now: float, ts: int) -> list[MoveEvent]:
        r = self._rooms.get(room)
        if r is None:
            return []
        events = []
        for action in self._rules.tick(r.state, now):
            r.seq += 1
            event = MoveEvent(r.seq, move_json(room, r.seq, SERVER_USER, orjson.dumps(action).decode(), ts))
            r.log.append(event)
            events.append(event)
        return events

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._rooms.clear()
