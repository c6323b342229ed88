"""A pipelined Redis connection for the move path: requests back to back, replies in order.

Every accepted move costs one script call. Through redis-py that is a connection checked out
of the pool, a timeout context, the command packed and the reply parsed in several layers:
about a quarter of a cluster instance's CPU under load. Here every call made during one turn
of the event loop leaves in a single write on one connection, and the replies, which Redis
sends in order, are matched to their callers first-in first-out, parsed by hiredis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import hiredis
from redis.exceptions import ResponseError

from .redis_link import RedisLink, command


class RedisPipe:
    def __init__(self, link: RedisLink, *, timeout_s: float, node: tuple[str, int] | None = None) -> None:
        self._link = link
        self._node = node  # a Redis Cluster's master (see rcluster.SlotPipes); else the link's master
        self._timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._connecting: asyncio.Lock | None = None
        self._waiting: deque[asyncio.Future[Any] | None] = deque()  # None: a reply nobody reads
        self._out: list[bytes] = []
        self._flush_scheduled = False

    async def call(self, *args: str, asking: bool = False) -> Any:
        """Send one command; its reply (a ResponseError is raised, not returned). ``asking``: a
        cluster's ``ASKING`` goes right before it, on the same connection (a slot being migrated)."""
        if self._writer is None or self._writer.is_closing():
            await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if asking:
            self._waiting.append(None)
            self._out.append(command("ASKING"))
        self._waiting.append(future)
        self._out.append(command(*args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        timer = loop.call_later(self._timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[str], *, asking: bool = False) -> Any:
        try:
            return await self.call("EVALSHA", sha, str(len(keys)), *keys, *args, asking=asking)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script, str(len(keys)), *keys, *args, asking=asking)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return
            reader, writer, parser = await self._link.open(self._node)
            # a connection of its own for the replies to come: whatever the last one carried fails with it
            self._writer, self._waiting, self._out = writer, deque(), []
            task = asyncio.create_task(self._read(reader, writer, parser, self._waiting), name="gamegw-redis-pipe")
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, parser: Any,
                    waiting: deque[asyncio.Future[Any] | None]) -> None:
        error: BaseException = ConnectionError("Redis closed the connection")
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = waiting.popleft()
                    if future is None or future.done():
                        continue  # nobody reads it, or its caller timed out; it still had to be consumed
                    if isinstance(reply, hiredis.ReplyError):
                        if str(reply).startswith("READONLY"):
                            # a master demoted to a replica: the next call asks where the master is
                            writer.close()
                        future.set_exception(ResponseError(str(reply)))
                    else:
                        future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError) as exc:
            error = exc
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            while waiting:  # a lost connection fails whatever it was carrying
                future = waiting.popleft()
                if future is not None and not future.done():
                    future.set_exception(ConnectionError(str(error)))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for task in list(self._readers):
            with contextlib.suppress(BaseException):
                await task


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis did not answer in time"))
