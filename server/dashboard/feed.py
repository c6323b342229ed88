"""The dashboard's live feed: what changes in the cluster, as small deltas, only while a page
is open somewhere.

Nobody watching costs one attribute test on the paths that report (a connection's add, remove,
rooms and state in the registry, an accepted move, a touch) and, in cluster mode, one
``EXISTS {p}:dash:watchers`` per instance every ``poll_s``. An open page (a stream of
``/admin/live``) sets that key with a short TTL and refreshes it while it stays open; every
instance that sees the key collects its deltas and publishes them in one batch per ``flush_s``
to ``{p}:dash:feed``, plus, once per ``tick_s``, its own figures (CPU, memory, rates), the
rooms whose moves it accepted meanwhile and the ``last_seen`` of its connections that spoke.
The instances serving a page subscribe to the channel while they do. In memory mode the
batches go straight to the local streams.

Deltas (``t`` is the type)::

    {"t": "conn", "conn": {...}}                   a connection registered (Connection.to_dict())
    {"t": "gone", "sid"}                           a connection's entry went
    {"t": "state", "sid", "state"}                 connected / grace
    {"t": "join" | "leave", "sid", "room"}
    {"t": "seen", "instance", "seen": {sid: ts}}   last seen, batched per tick
    {"t": "room", "instance", "room", "seq", "moves", "interval_s"}
    {"t": "instance", "instance", "beat", "connections", "cpu_pct", "rss_bytes", "rates": {...}}
    {"t": "revoked", "user"}                       streams re-check their tokens at once
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from ..logs import Throttle, log, stop_task
from ..state.keys import Keys
from ..state.redis_link import RedisLink
from ..state.subscriber import SUBSCRIBED, subscribe

logger = logging.getLogger("gamegw.dashboard")
Delta = dict[str, Any]
Stats = Callable[[], dict[str, Any]]


class FeedEnded(Exception):
    """A subscription ended: ``reason`` is ``closed`` (shutdown, lost Redis) or ``lagging``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Subscription:
    """One stream's queue of batches. A stream that falls ``max_batches`` behind ends as
    ``lagging``: its page starts again from a fresh snapshot rather than hold the memory."""

    def __init__(self, max_batches: int = 2000) -> None:
        self._queue: asyncio.Queue[list[Delta] | None] = asyncio.Queue(max_batches)
        self._ended: str | None = None

    def put(self, batch: list[Delta]) -> None:
        if self._ended is None:
            try:
                self._queue.put_nowait(batch)
            except asyncio.QueueFull:
                self.end("lagging")

    def end(self, reason: str) -> None:
        if self._ended is None:
            self._ended = reason
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)

    async def next(self, timeout_s: float) -> list[Delta] | None:
        """The next batch, or None when none came within ``timeout_s``."""
        try:
            batch = await asyncio.wait_for(self._queue.get(), max(0.0, timeout_s))
        except TimeoutError:
            return None
        if batch is None:
            raise FeedEnded(self._ended or "closed")
        return batch


class Feed:
    """The feed of one instance: collects while ``watching`` and sends a batch per ``flush_s``.
    This base never watches (nobody can subscribe); :class:`LocalFeed` and :class:`RedisFeed` do."""

    def __init__(self, instance_id: str = "", stats: Stats | None = None, *, flush_s: float = 0.25,
                 tick_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.instance_id = instance_id
        self.watching = False
        self._stats = stats or dict
        self._flush_s = flush_s
        self._tick_s = tick_s
        self._clock = clock
        self._pending: list[Delta] = []
        self._moves: dict[str, list[int]] = {}  # room -> [highest seq, moves] since the last tick
        self._seen: dict[str, float] = {}
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._throttle = Throttle()
        self._last_tick = time.monotonic()

    # -- what the gateway reports (cheap when nobody watches) --------------------------------

    def publish(self, delta: Delta) -> None:
        if self.watching:
            self._pending.append(delta)

    def move(self, room: str, seq: int) -> None:
        if self.watching:
            seen = self._moves.get(room)
            if seen is None:
                self._moves[room] = [seq, 1]
            else:
                seen[0] = max(seen[0], seq)
                seen[1] += 1

    def seen(self, sid: str, at: float) -> None:
        if self.watching:
            self._seen[sid] = at

    def revoked(self, user_id: str) -> None:
        """Open streams re-check their tokens now, not at their next round."""
        self.publish({"t": "revoked", "user": user_id})

    # -- streams -------------------------------------------------------------------------

    @property
    def streams(self) -> int:
        return len(self._subs)

    async def subscribe(self) -> Subscription:
        raise NotImplementedError("this feed serves no streams")

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def end_streams(self, reason: str = "closed") -> None:
        for sub in list(self._subs):
            sub.end(reason)
        self._subs.clear()

    def _deliver(self, batch: list[Delta]) -> None:
        for sub in list(self._subs):
            sub.put(batch)

    # -- the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="gamegw-dashboard-feed")

    async def aclose(self) -> None:
        self.end_streams()
        if self._task is not None:
            await stop_task(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception as exc:  # Redis away: the streams end (their pages resync), the loop goes on
                self._throttle.log(logger, "dashboard_feed_failed", logging.WARNING,
                                   error=str(exc) or type(exc).__name__)
                self._pending.clear()

    async def flush(self) -> None:
        """One round: learn whether anyone watches, then send what was collected."""
        await self._poll()
        if not self.watching:
            self._pending.clear()
            self._moves.clear()
            self._seen.clear()
            return
        now = time.monotonic()
        if now - self._last_tick >= self._tick_s:
            self._tick(now - self._last_tick)
            self._last_tick = now
        if self._pending:
            batch, self._pending = self._pending, []
            await self._send(batch)

    def _tick(self, interval_s: float) -> None:
        iid = self.instance_id
        for room, (seq, moves) in self._moves.items():
            self._pending.append({"t": "room", "instance": iid, "room": room, "seq": seq, "moves": moves,
                                  "interval_s": round(interval_s, 3)})
        self._moves.clear()
        if self._seen:
            self._pending.append({"t": "seen", "instance": iid, "seen": self._seen})
            self._seen = {}
        self._pending.append({"t": "instance", "instance": iid, "beat": self._clock(), **self._stats()})

    def start_watching(self) -> None:
        """From now on this instance collects; its first tick's rates start here."""
        if not self.watching:
            self.watching = True
            self._last_tick = time.monotonic()
            self._stats()  # the samplers' window starts now, not when the last page closed

    async def _poll(self) -> None:
        return None

    async def _send(self, batch: list[Delta]) -> None:
        self._deliver(batch)


class LocalFeed(Feed):
    """One instance: a page open here is the only way to watch it."""

    async def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subs.add(sub)
        self.start_watching()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        super().unsubscribe(sub)
        self.watching = bool(self._subs)


class RedisFeed(Feed):
    """Cluster mode: the watchers key says whether anyone watches; the channel carries the deltas."""

    def __init__(self, redis: Redis, keys: Keys, instance_id: str, stats: Stats | None = None, *, link: RedisLink,
                 timeout_s: float = 5.0, poll_s: float = 0.5, watchers_ttl_s: float = 3.0, **kw: Any) -> None:
        super().__init__(instance_id, stats, **kw)
        self._r: Any = redis
        self._k = keys
        self._link = link
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._watchers_ttl_s = watchers_ttl_s
        self._next_poll = 0.0
        self._reader: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._subscribed = asyncio.Event()

    async def subscribe(self) -> Subscription:
        """Subscribed to the channel and every instance publishing to it when this returns: an
        instance that did not watch yet notices the key within ``poll_s``, so the first page
        waits that long (its snapshot comes after, and misses nothing)."""
        sub = Subscription()
        self._subs.add(sub)
        try:
            if self._reader is None or self._reader.done():
                self._subscribed.clear()
                self._reader = asyncio.create_task(self._read(), name="gamegw-dashboard-reader")
            await asyncio.wait_for(self._subscribed.wait(), self._timeout_s)
            before = await self._r.set(self._k.dash_watchers, self.instance_id, px=self._ttl_ms, get=True)
        except BaseException:
            self.unsubscribe(sub)
            raise
        self.start_watching()
        if before is None:
            await asyncio.sleep(self._poll_s + self._flush_s)
        return sub

    @property
    def _ttl_ms(self) -> int:
        return int(self._watchers_ttl_s * 1000)

    def unsubscribe(self, sub: Subscription) -> None:
        super().unsubscribe(sub)
        if not self._subs and self._reader is not None:
            # the key expires by itself; the others stop within its TTL
            self._reader.cancel()
            self._stopping.add(self._reader)
            self._reader.add_done_callback(self._stopping.discard)
            self._reader = None

    async def _read(self) -> None:
        try:
            async for messages in subscribe(self._link, self._k.dash_feed):
                for message in messages:
                    if message == SUBSCRIBED:
                        self._subscribed.set()
                    else:
                        self._deliver(orjson.loads(message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log(logger, "dashboard_feed_lost", logging.WARNING, error=str(exc) or type(exc).__name__)
        self._reader = None
        self.end_streams()  # the pages reconnect and start from a fresh snapshot

    async def _poll(self) -> None:
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + self._poll_s
        if self._subs:  # a page open here keeps everyone watching
            await self._r.set(self._k.dash_watchers, self.instance_id, px=self._ttl_ms)
        elif await self._r.exists(self._k.dash_watchers):
            self.start_watching()
        else:
            self.watching = False

    async def _send(self, batch: list[Delta]) -> None:
        await self._r.publish(self._k.dash_feed, orjson.dumps(batch))

    async def aclose(self) -> None:
        for task in [*self._stopping, *([self._reader] if self._reader else [])]:
            await stop_task(task)
        self._reader = None
        await super().aclose()

