"""Sharded pub/sub (``SSUBSCRIBE``) over a Redis Cluster: one raw connection per master, each
channel subscribed on the master of its slot, so that a room's traffic reaches only the shard
that holds the room and the instances that subscribed to it.

:meth:`ShardSubscriber.subscribe` returns once the master confirmed the subscription: whatever a
script publishes to the channel after that reaches us. A master that goes away (or moves a slot
away: Redis then unsubscribes us itself) loses its channels' messages until they are subscribed
again; ``on_lost`` is called at once with them, so that the owner catches up from the rooms' logs, and the
channels are subscribed again in the background (:meth:`settled` waits for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis

from ..logs import log
from .redis_link import RedisLink, command

logger = logging.getLogger("gamegw.shards")


class _Node:
    """One master's connection: subscriptions in flight (answered in order) and its reader."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.pending: deque[tuple[str, asyncio.Future[None]]] = deque()
        self.channels: set[str] = set()
        self.task: asyncio.Task[None] | None = None


class ShardSubscriber:
    def __init__(self, redis: Any, link: RedisLink, *, timeout_s: float,
                 on_messages: Callable[[list[str]], Awaitable[None]], on_lost: Callable[[set[str]], None]) -> None:
        self._redis = redis  # a redis.asyncio.cluster.RedisCluster: its slot map says where a channel lives
        self._link = link  # opens (and AUTHenticates) the connection to one master
        self._timeout_s = timeout_s
        self._on_messages = on_messages
        self._on_lost = on_lost
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._opening: dict[tuple[str, int], asyncio.Lock] = {}
        self._wanted: set[str] = set()
        self._unsettled: set[str] = set()  # wanted, lost, not subscribed again yet
        self._retrying: set[asyncio.Task[None]] = set()
        self._calm = asyncio.Event()  # set while nothing wanted waits to be subscribed again
        self._calm.set()

    async def subscribe(self, channel: str) -> None:
        """Subscribe on the channel's master; raise if it cannot be done within the timeout."""
        self._wanted.add(channel)
        try:
            await self._subscribe(channel)
        except BaseException:
            if channel not in self._unsettled:  # a first subscription: nobody waits for it now
                self._wanted.discard(channel)
            raise

    async def _subscribe(self, channel: str) -> None:
        for attempt in range(3):
            target = self._redis.get_node_from_key(channel)
            node = await self._node((target.host, int(target.port)))
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            node.pending.append((channel, future))
            node.writer.write(command("SSUBSCRIBE", channel))
            try:
                await asyncio.wait_for(future, self._timeout_s)
            except _Moved:
                if attempt == 2:
                    raise ConnectionError(f"the slot of {channel!r} keeps moving") from None
                await self._redis.nodes_manager.initialize()  # a fresh slot map, then again
                continue
            if channel not in self._wanted:  # unsubscribed meanwhile (a resubscription's race)
                node.writer.write(command("SUNSUBSCRIBE", channel))
                return
            node.channels.add(channel)
            self._unsettled.discard(channel)
            self._check_calm()
            return

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._unsettled.discard(channel)
        self._check_calm()
        for node in self._nodes.values():
            if channel in node.channels:
                node.channels.discard(channel)
                if not node.writer.is_closing():
                    node.writer.write(command("SUNSUBSCRIBE", channel))

    async def settled(self) -> None:
        """Until every wanted channel is subscribed again after a loss (raises on timeout)."""
        await asyncio.wait_for(self._calm.wait(), self._timeout_s * 2)

    def _check_calm(self) -> None:
        if not self._unsettled & self._wanted:
            self._calm.set()

    async def _node(self, address: tuple[str, int]) -> _Node:
        node = self._nodes.get(address)
        if node is not None and not node.writer.is_closing():
            return node
        lock = self._opening.setdefault(address, asyncio.Lock())
        async with lock:
            node = self._nodes.get(address)
            if node is not None and not node.writer.is_closing():
                return node
            reader, writer, parser = await self._link.open(address)
            node = _Node(writer)
            node.task = asyncio.create_task(self._read(address, node, reader, parser), name="gamegw-shard-reader")
            self._nodes[address] = node
            return node

    async def _read(self, address: tuple[str, int], node: _Node, reader: asyncio.StreamReader, parser: Any) -> None:
        error = "closed"
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                batch: list[str] = []
                while (reply := parser.gets()) is not False:
                    self._reply(node, reply, batch)
                if batch:
                    await self._on_messages(batch)
        except (OSError, asyncio.IncompleteReadError) as exc:
            error = str(exc) or type(exc).__name__
        finally:
            node.writer.close()
            if self._nodes.get(address) is node:
                del self._nodes[address]
            while node.pending:
                _channel, future = node.pending.popleft()
                if not future.done():
                    future.set_exception(ConnectionError(f"Redis node {address} went away"))
        lost = node.channels & self._wanted
        if lost:
            log(logger, "shard_lost", logging.WARNING, node=f"{address[0]}:{address[1]}", channels=len(lost),
                error=error)
            self._lose(lost)

    def _reply(self, node: _Node, reply: Any, batch: list[str]) -> None:
        if isinstance(reply, hiredis.ReplyError):
            if node.pending:
                _channel, future = node.pending.popleft()
                if not future.done():
                    text = str(reply)
                    future.set_exception(_Moved(text) if text.startswith(("MOVED", "ASK")) else ConnectionError(text))
            return
        if not isinstance(reply, list) or len(reply) != 3:
            return
        kind, channel = reply[0], reply[1]
        if kind == "smessage":
            batch.append(reply[2])
        elif kind == "ssubscribe":
            if node.pending:
                _channel, future = node.pending.popleft()
                if not future.done():
                    future.set_result(None)
        elif kind == "sunsubscribe" and channel in node.channels:  # not asked for: the slot moved away
            node.channels.discard(channel)
            self._lose({channel})

    def _lose(self, channels: set[str]) -> None:
        self._unsettled |= channels
        self._calm.clear()
        self._on_lost(channels)
        task = asyncio.create_task(self._again(channels), name="gamegw-shard-resubscribe")
        self._retrying.add(task)
        task.add_done_callback(self._retrying.discard)

    async def _again(self, channels: set[str]) -> None:
        backoff = 0.05
        while channels := channels & self._wanted:
            for channel in sorted(channels):
                with contextlib.suppress(Exception):
                    await self._subscribe(channel)
            channels = channels & self._unsettled
            if channels:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                with contextlib.suppress(Exception):
                    await self._redis.nodes_manager.initialize()

    async def aclose(self) -> None:
        self._wanted.clear()
        for task in list(self._retrying):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for node in list(self._nodes.values()):
            node.writer.close()
            if node.task is not None:
                node.task.cancel()
                with contextlib.suppress(BaseException):
                    await node.task
        self._nodes.clear()


class _Moved(ConnectionError):
    """The node does not serve the channel's slot (any more)."""
