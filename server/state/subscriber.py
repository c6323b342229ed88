"""A lean Redis subscriber for the bus: one channel, raw RESP, parsed by hiredis.

redis-py's ``PubSub.get_message`` costs tens of microseconds per message (a timeout context
and several layers per call); under cluster load every move crosses it once per instance, which
made it an eighth of the gateway's CPU. Here a single task reads whatever bytes have arrived,
feeds them to hiredis and hands every complete message on: a few microseconds each.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlparse

import hiredis

from . import rcluster

SUBSCRIBED = ""  # yielded once the subscription is confirmed (no published message is empty)


class SubscriptionRefused(ConnectionError):
    """Redis answered AUTH or SUBSCRIBE with an error; ``reply`` is its text."""

    def __init__(self, reply: str) -> None:
        super().__init__(f"Redis refused the subscription: {reply}")
        self.reply = reply


def command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def open_connection(url: str, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to ``url``, AUTHenticated when it has a password (the reply is the
    caller's first). A cluster URL: the first of its seed nodes that accepts, from a random one."""
    candidates = rcluster.node_urls(url)
    start = random.randrange(len(candidates))
    for i, candidate in enumerate(candidates[start:] + candidates[:start]):
        parsed = urlparse(candidate)
        try:
            if parsed.scheme == "unix":
                opened = asyncio.open_unix_connection(parsed.path)
            else:
                context = ssl.create_default_context() if parsed.scheme == "rediss" else None
                opened = asyncio.open_connection(parsed.hostname, parsed.port or 6379, ssl=context)
            reader, writer = await asyncio.wait_for(opened, timeout_s)
        except OSError:
            if i == len(candidates) - 1:
                raise
            continue
        if parsed.password:
            # the two-argument form, as redis-py sends it (HELLO 3 AUTH): Redis accepts any
            # password for a user without one, and the one-argument form would be refused
            writer.write(command("AUTH", unquote(parsed.username or "") or "default", unquote(parsed.password)))
        return reader, writer
    raise ConnectionError("no Redis node to connect to")


async def subscribe(url: str, channel: str, *, timeout_s: float) -> AsyncIterator[list[str]]:
    """Yield batches of the messages published to ``channel``; raise when the connection fails."""
    reader, writer = await open_connection(url, timeout_s)
    parser = hiredis.Reader(encoding="utf-8", errors="replace")
    try:
        writer.write(command("SUBSCRIBE", channel))
        await writer.drain()
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the subscriber connection")
            parser.feed(data)
            batch: list[str] = []
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise SubscriptionRefused(str(reply))
                if isinstance(reply, list) and len(reply) == 3:
                    if reply[0] == "message":
                        batch.append(reply[2])
                    elif reply[0] == "subscribe":
                        batch.append(SUBSCRIBED)
            if batch:
                yield batch
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
