"""Sessions: a user's seats at the gateway, what survives a drop, and the grace that waits.

A session is one seat of a user: its rooms, the ``seq`` of each room when the user was last
seen, and which connection (sid, instance) holds it now. At most ``max_connections_per_user``
of a user's sessions are *connected* at any moment, cluster-wide.

States and transitions (each transition is one atomic step of the store: a Lua script in
Redis, a method that never awaits in memory)::

                  seat (new)                     drop (holder only)
    (none) ─────────────────────► connected ───────────────────────► grace
                                   │  ▲  │ ▲                            │
             seat (takeover: the   │  │  │ └──── seat (claim: newest ───┘
             oldest live session   │  └──┘        drop first)          │
             passes to the new sid)│                                    │ expire_due (grace over)
                                   ▼ end (holder only), seat (evict)    ▼
                                 (none) ◄────────────────────────────────

* :meth:`SessionStore.seat` is the only way a connection gets a session: it reads the user's
  sessions, claims one in grace, or creates one, or takes over / evicts / refuses at the
  limit, all in one step, so that two connects racing on two instances cannot both win.
* Only the holder (``sid``) of a session changes it: :meth:`set_room`, :meth:`drop` and
  :meth:`end` compare the holder first; a connection that lost its session cannot write it back.
* :meth:`expire_due` hands each session whose grace ended to exactly one caller.

A session's room seats belong to it: they go when the session ends (the caller unseats the
rooms :meth:`end` or :meth:`expire_due` return); a sweep removes a seat whose session no longer
exists, so that a crash between the two steps cannot leave a ghost player.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Session:
    session_id: str
    user_id: str
    sid: str
    instance_id: str
    created_at: float
    state: str = "connected"  # or "grace"
    rooms: dict[str, int] = field(default_factory=dict)  # room -> seq when the user was last seen
    dropped_at: float | None = None
    grace_until: float | None = None
    cause: str = ""  # why it dropped: transport_close, ping_timeout, instance_lost, simulated_drop, ...

    def head(self) -> dict[str, Any]:
        """Everything but the rooms (a Redis store keeps those in a hash of their own)."""
        out = dataclasses.asdict(self)
        del out["rooms"]
        return out

    def copy(self) -> Session:
        return dataclasses.replace(self, rooms=dict(self.rooms))


@dataclass
class Seat:
    """What :meth:`SessionStore.seat` decided for a new connection.

    ``outcome``: ``new`` (a fresh session), ``resumed`` (a session in grace was claimed),
    ``takeover`` (the user's oldest live session passed to this connection; ``previous_sid`` must
    be closed with 4504, the rooms see nothing) or ``refused`` (at the limit, policy ``refuse``).
    ``evicted``: sessions ended to make room (their connections get 4504, their rooms
    ``player_left``).
    """

    outcome: str
    session: Session | None = None
    previous_sid: str | None = None
    previous_instance: str | None = None
    dropped_at: float | None = None  # when the claimed session had dropped
    evicted: list[Session] = field(default_factory=list)
    live: int = 0  # live sessions the user had before this connection
    budget: tuple[float, float, float] | None = None  # the user's event budget, as last saved


class SessionStore(Protocol):
    async def seat(self, *, user_id: str, sid: str, instance_id: str, now: float, new_session_id: str,
                   max_live: int, policy: str) -> Seat:
        """Give a new connection its session, in one atomic step (see the module docstring)."""
        ...

    async def save_budget(self, user_id: str, snapshot: tuple[float, float, float], ttl_s: float) -> None:
        """Keep the user's event budget for the next connect, on any instance (see limits.py)."""
        ...

    async def get(self, session_id: str) -> Session | None: ...

    async def exists(self, session_id: str) -> bool: ...

    async def of_user(self, user_id: str) -> list[Session]:
        """The user's sessions, oldest first."""
        ...

    async def set_room(self, session: Session, room: str, seq: int | None) -> bool:
        """Record (``seq`` an int) or forget (``None``) a room of the session held by
        ``session.sid``; False, and nothing written, when another connection holds it now."""
        ...

    async def drop(self, session: Session, grace_until: float) -> bool:
        """Put a session into grace (it must be ``state="grace"`` with its rooms' seqs recorded).
        False, and nothing written, when another connection holds the session now."""
        ...

    async def end(self, session: Session) -> Session | None:
        """Delete the session held by ``session.sid``; the session as stored (its rooms to
        unseat), or None when another connection holds it or it is gone."""
        ...

    async def expire_due(self, now: float) -> list[Session]:
        """Sessions whose grace ended; each is returned to exactly one caller, and deleted."""
        ...

    async def reassert(self, session: Session) -> bool:
        """After an outage (the store may be back empty): write a live connection's session
        again, unless another connection holds it now."""
        ...

    async def aclose(self) -> None: ...


def decide(sessions: list[Session], *, user_id: str, sid: str, instance_id: str, now: float, new_session_id: str,
           max_live: int, policy: str) -> tuple[Seat, list[Session]]:
    """The seat rule, on the user's sessions (oldest first): (the decision, sessions to write).

    The memory store runs it as is; the Redis store's SEAT script is the same rule in Lua.
    """
    live = [s for s in sessions if s.state == "connected"]
    grace = sorted((s for s in sessions if s.state == "grace"), key=lambda s: s.dropped_at or 0, reverse=True)
    evicted: list[Session] = []
    if grace:
        excess = len(live) - max_live + 1
        if excess > 0:
            if policy == "refuse":
                return Seat("refused", live=len(live)), []
            evicted = live[:excess]
        claimed = grace[0]
        dropped_at, previous_sid, previous_instance = claimed.dropped_at, claimed.sid, claimed.instance_id
        claimed.state, claimed.sid, claimed.instance_id = "connected", sid, instance_id
        claimed.grace_until = claimed.dropped_at = None
        return Seat("resumed", claimed, previous_sid=previous_sid, previous_instance=previous_instance,
                    dropped_at=dropped_at, evicted=evicted, live=len(live)), [claimed]
    excess = len(live) - max_live + 1
    if excess <= 0:
        fresh = Session(session_id=new_session_id, user_id=user_id, sid=sid, instance_id=instance_id, created_at=now)
        return Seat("new", fresh, live=len(live)), [fresh]
    if policy == "refuse":
        return Seat("refused", live=len(live)), []
    victim, evicted = live[0], live[1:excess]
    previous_sid, previous_instance = victim.sid, victim.instance_id
    victim.sid, victim.instance_id = sid, instance_id
    return Seat("takeover", victim, previous_sid=previous_sid, previous_instance=previous_instance,
                evicted=evicted, live=len(live)), [victim]


class MemorySessionStore:
    """One process's sessions; no method awaits, so each is atomic on the event loop. Indexed by
    user and by grace, so that a connect and a sweep cost what the user's sessions and those in
    grace do, not a scan of every session (at 16,000 connections a third of the gateway's CPU)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._by_user: dict[str, dict[str, None]] = {}  # user -> the ids of its sessions
        self._grace: dict[str, None] = {}  # the ids of the sessions in grace

    def _put(self, session: Session) -> None:
        self._by_id[session.session_id] = session
        self._by_user.setdefault(session.user_id, {})[session.session_id] = None
        if session.state == "grace":
            self._grace[session.session_id] = None
        else:
            self._grace.pop(session.session_id, None)

    def _delete(self, session_id: str) -> Session:
        session = self._by_id.pop(session_id)
        mine = self._by_user[session.user_id]
        del mine[session_id]
        if not mine:
            del self._by_user[session.user_id]
        self._grace.pop(session_id, None)
        return session

    def _mine(self, user_id: str) -> list[Session]:
        return sorted((self._by_id[i] for i in self._by_user.get(user_id, ())), key=lambda s: s.created_at)

    async def seat(self, *, user_id: str, sid: str, instance_id: str, now: float, new_session_id: str,
                   max_live: int, policy: str) -> Seat:
        mine = [s.copy() for s in self._mine(user_id)]
        seat, writes = decide(mine, user_id=user_id, sid=sid, instance_id=instance_id, now=now,
                              new_session_id=new_session_id, max_live=max_live, policy=policy)
        for s in seat.evicted:
            self._delete(s.session_id)
        for s in writes:
            self._put(s.copy())
        return seat

    async def save_budget(self, user_id: str, snapshot: tuple[float, float, float], ttl_s: float) -> None:
        return None  # one instance: its own budgets are all there is

    async def get(self, session_id: str) -> Session | None:
        s = self._by_id.get(session_id)
        return s.copy() if s else None

    async def exists(self, session_id: str) -> bool:
        return session_id in self._by_id

    async def of_user(self, user_id: str) -> list[Session]:
        return [s.copy() for s in self._mine(user_id)]

    async def set_room(self, session: Session, room: str, seq: int | None) -> bool:
        current = self._by_id.get(session.session_id)
        if current is None or current.sid != session.sid:
            return False
        if seq is None:
            current.rooms.pop(room, None)
        else:
            current.rooms[room] = seq
        return True

    async def drop(self, session: Session, grace_until: float) -> bool:
        current = self._by_id.get(session.session_id)
        if current is None or current.sid != session.sid:
            return False
        session.state, session.grace_until = "grace", grace_until
        self._put(session.copy())
        return True

    async def end(self, session: Session) -> Session | None:
        current = self._by_id.get(session.session_id)
        if current is None or current.sid != session.sid:
            return None
        return self._delete(session.session_id).copy()

    async def expire_due(self, now: float) -> list[Session]:
        due = [s for s in (self._by_id[i] for i in self._grace) if (s.grace_until or 0) <= now]
        for s in due:
            self._delete(s.session_id)
        return due

    async def reassert(self, session: Session) -> bool:
        current = self._by_id.get(session.session_id)
        if current is not None and current.sid != session.sid:
            return False
        self._put(session.copy())
        return True

    async def aclose(self) -> None:
        self._by_id.clear()
        self._by_user.clear()
        self._grace.clear()
