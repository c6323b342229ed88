"""A lean Redis subscriber for the bus: one channel, raw RESP, parsed by hiredis.

redis-py's ``PubSub.get_message`` costs tens of microseconds per message (a timeout context
and several layers per call); under cluster load every move crosses it once per instance, which
made it an eighth of the gateway's CPU. Here a single task reads whatever bytes have arrived,
feeds them to hiredis and hands every complete message on: a few microseconds each.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import hiredis
from redis.exceptions import ResponseError

from .redis_link import RedisLink, command

SUBSCRIBED = ""  # yielded once the subscription is confirmed (no published message is empty)


class SubscriptionRefused(ConnectionError):
    """Redis answered AUTH or SUBSCRIBE with an error; ``reply`` is its text."""

    def __init__(self, reply: str) -> None:
        super().__init__(f"Redis refused the subscription: {reply}")
        self.reply = reply


async def subscribe(link: RedisLink, channel: str) -> AsyncIterator[list[str]]:
    """Yield batches of the messages published to ``channel``; raise when the connection fails.
    Each call asks the link for the master again: a listener that reconnects follows a failover."""
    try:
        reader, writer, parser = await link.open()
    except ResponseError as exc:
        raise SubscriptionRefused(str(exc)) from None
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
