"""The connection registry: who is connected where, in which rooms, since when.

Two indexes: user → live sids, sid → :class:`Connection` (user, instance, rooms, address,
connected at, last seen). The gateway writes it; ``gamectl connections ls`` and the admin API
read it. :class:`MemoryRegistry` serves one instance; a Redis registry (cluster mode) shares
the same Protocol and test suite.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass
class Connection:
    sid: str
    user_id: str
    instance_id: str
    address: str
    connected_at: float
    last_seen: float
    session_id: str = ""
    transport: str = ""
    state: str = "connected"  # or "grace" once the connection dropped and the session waits
    resumed: bool = False  # this connection resumed a session that had dropped (or took it over)
    rooms: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rooms"] = sorted(self.rooms)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Connection:
        fields = dict(data)
        fields["rooms"] = set(fields.get("rooms") or ())
        return cls(**fields)


class Registry(Protocol):
    async def add(self, conn: Connection) -> None: ...

    async def remove(self, sid: str) -> Connection | None: ...

    async def get(self, sid: str) -> Connection | None: ...

    async def user_sids(self, user_id: str) -> list[str]:
        """The user's live sids, oldest connection first."""
        ...

    async def list(
        self, *, user_id: str | None = None, room: str | None = None, instance_id: str | None = None
    ) -> list[Connection]: ...

    async def add_room(self, sid: str, room: str) -> None: ...

    async def remove_room(self, sid: str, room: str) -> None: ...

    async def touch(self, sid: str, now: float) -> None: ...

    async def mark(self, sid: str, state: str) -> None:
        """Set a connection's state ("connected", or "grace" after a drop)."""
        ...

    async def aclose(self) -> None: ...


class MemoryRegistry:
    def __init__(self) -> None:
        self._by_sid: dict[str, Connection] = {}
        self._by_user: dict[str, dict[str, None]] = {}  # insertion-ordered sets

    async def add(self, conn: Connection) -> None:
        self._by_sid[conn.sid] = conn
        self._by_user.setdefault(conn.user_id, {})[conn.sid] = None

    async def remove(self, sid: str) -> Connection | None:
        conn = self._by_sid.pop(sid, None)
        if conn is not None:
            sids = self._by_user.get(conn.user_id, {})
            sids.pop(sid, None)
            if not sids:
                self._by_user.pop(conn.user_id, None)
        return conn

    async def get(self, sid: str) -> Connection | None:
        return self._by_sid.get(sid)

    async def user_sids(self, user_id: str) -> list[str]:
        sids = self._by_user.get(user_id, {})
        return sorted(sids, key=lambda s: self._by_sid[s].connected_at)

    async def list(
        self, *, user_id: str | None = None, room: str | None = None, instance_id: str | None = None
    ) -> list[Connection]:
        conns = (
            [self._by_sid[s] for s in self._by_user.get(user_id, {})] if user_id is not None
            else list(self._by_sid.values())
        )
        return [
            c for c in conns
            if (room is None or room in c.rooms) and (instance_id is None or c.instance_id == instance_id)
        ]

    async def add_room(self, sid: str, room: str) -> None:
        conn = self._by_sid.get(sid)
        if conn is not None:
            conn.rooms.add(room)

    async def remove_room(self, sid: str, room: str) -> None:
        conn = self._by_sid.get(sid)
        if conn is not None:
            conn.rooms.discard(room)

    async def touch(self, sid: str, now: float) -> None:
        conn = self._by_sid.get(sid)
        if conn is not None:
            conn.last_seen = now

    async def mark(self, sid: str, state: str) -> None:
        conn = self._by_sid.get(sid)
        if conn is not None:
            conn.state = state

    async def aclose(self) -> None:
        self._by_sid.clear()
        self._by_user.clear()
