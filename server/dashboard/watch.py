"""The registry as the gateway sees it once a dashboard may watch: each change also becomes a
delta of the feed (which drops it at once while nobody watches)."""

from __future__ import annotations

from ..state.registry import Connection, Registry
from .feed import Feed


class WatchedRegistry:
    """Wraps the real registry; reads go straight through. The cluster keeps the real one for
    its own upkeep (reaping, recovery), which the feed shows through the gateway's drops."""

    def __init__(self, inner: Registry, feed: Feed) -> None:
        self.inner = inner
        self._feed = feed

    async def add(self, conn: Connection) -> None:
        await self.inner.add(conn)
        self._feed.publish({"t": "conn", "conn": conn.to_dict()})

    async def remove(self, sid: str) -> Connection | None:
        conn = await self.inner.remove(sid)
        self._feed.publish({"t": "gone", "sid": sid})
        return conn

    async def get(self, sid: str) -> Connection | None:
        return await self.inner.get(sid)

    async def user_sids(self, user_id: str) -> list[str]:
        return await self.inner.user_sids(user_id)

    async def list(
        self, *, user_id: str | None = None, room: str | None = None, instance_id: str | None = None
    ) -> list[Connection]:
        return await self.inner.list(user_id=user_id, room=room, instance_id=instance_id)

    async def add_room(self, sid: str, room: str) -> None:
        await self.inner.add_room(sid, room)
        self._feed.publish({"t": "join", "sid": sid, "room": room})

    async def remove_room(self, sid: str, room: str) -> None:
        await self.inner.remove_room(sid, room)
        self._feed.publish({"t": "leave", "sid": sid, "room": room})

    async def touch(self, sid: str, now: float) -> None:
        self._feed.seen(sid, now)
        await self.inner.touch(sid, now)

    async def mark(self, sid: str, state: str) -> None:
        await self.inner.mark(sid, state)
        self._feed.publish({"t": "state", "sid": sid, "state": state})

    async def aclose(self) -> None:
        await self.inner.aclose()
