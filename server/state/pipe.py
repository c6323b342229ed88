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
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ResponseError

from .subscriber import command


class RedisPipe:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False

    async def call(self, *args: str) -> Any:
        """Send one command; its reply (a ResponseError is raised, not returned)."""
        if self._writer is None or self._writer.is_closing():
            await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
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

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[str]) -> Any:
        try:
            return await self.call("EVALSHA", sha, str(len(keys)), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.call("EVAL", script, str(len(keys)), *keys, *args)

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
            parsed = urlparse(self._url)
            if parsed.scheme == "unix":
                opened = asyncio.open_unix_connection(parsed.path)
            else:
                context = ssl.create_default_context() if parsed.scheme == "rediss" else None
                opened = asyncio.open_connection(parsed.hostname, parsed.port or 6379, ssl=context)
            reader, writer = await asyncio.wait_for(opened, self._timeout_s)
            parser = hiredis.Reader(encoding="utf-8", errors="replace")
            setup = []
            if parsed.password:
                user = [unquote(parsed.username)] if parsed.username else []
                setup.append(command("AUTH", *user, unquote(parsed.password)))
            db = parsed.path.strip("/") if parsed.scheme != "unix" else ""
            if db and db != "0":
                setup.append(command("SELECT", db))
            for request in setup:  # answered before anything else: check each reply now
                writer.write(request)
                await writer.drain()
                while (reply := parser.gets()) is False:
                    data = await asyncio.wait_for(reader.read(1 << 16), self._timeout_s)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    parser.feed(data)
                if isinstance(reply, hiredis.ReplyError):
                    writer.close()
                    raise ResponseError(str(reply))
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader, parser), name="gamegw-redis-pipe")

    async def _read(self, reader: asyncio.StreamReader, parser: Any) -> None:
        error: BaseException = ConnectionError("Redis closed the connection")
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = self._waiting.popleft()
                    if future.done():
                        continue  # its caller timed out; the reply still had to be consumed
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(ResponseError(str(reply)))
                    else:
                        future.set_result(reply)
        except (OSError, asyncio.IncompleteReadError) as exc:
            error = exc
        finally:
            if self._writer is not None:
                self._writer.close()
            self._writer = None
            while self._waiting:  # a lost connection fails whatever it was carrying
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(ConnectionError(str(error)))

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            with contextlib.suppress(BaseException):
                await self._reader_task


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis did not answer in time"))
