"""How room events and instance-to-instance messages travel.

:class:`LocalBus` (one instance) writes straight to the local sockets. :class:`RedisBus`
(cluster mode) has one subscription per instance, on its own channel ``{p}:ch:{iid}``; room
events are published, by Lua scripts, to exactly the instances that hold members of the room
(this one included, so every instance sees a room's events in the same order). Messages on a
channel start with one letter:

* ``M{room}\\n{seq}\\n{move json}``: a move, delivered to the local members of the room;
* ``E{room}\\n{skip sid}\\n{packet}``: another room event, already encoded as a Socket.IO packet;
* ``C{json}``: a control request (kick, drop, close) to carry out here and answer;
* ``R{json}``: the answer to one of our requests;
* ``P{nonce}``: our own loopback probe (``/readyz``, and every ``probe_interval_s``: a listener
  that does not hear it while Redis answers is restarted).

The listener never awaits a fan-out: writing to a local socket only queues the packet.

Moves reach local members in ``seq`` order with no gaps and no repeats even when pub/sub loses
messages (a listener that reconnects misses what was published meanwhile): a move whose
``seq`` is not the next one of its room is held while the missing ones are read from the
room's log, and one already delivered is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from engineio import packet as eio_packet
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..logs import log, stop_task
from ..metrics import Metrics
from ..state import rcluster
from ..state.keys import Keys
from ..state.redis_link import RedisLink
from ..state.rooms import MoveEvent
from ..state.shards import ShardSubscriber
from ..state.subscriber import SUBSCRIBED, subscribe
from ..transport.manager import GameManager

if TYPE_CHECKING:
    from ..state.rooms_redis import RedisRoomStore

NAMESPACE = "/game"
logger = logging.getLogger("gamegw.bus")
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# KEYS: insts   ARGV: channel_prefix message
EMIT = """
for _, i in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('PUBLISH', ARGV[1] .. i, ARGV[2])
end
return 1
"""


class Bus(Protocol):
    async def publish_move(self, room: str, event: MoveEvent) -> None:
        """Deliver an accepted move to every member of the room, on every instance."""
        ...

    async def emit_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None: ...

    async def probe(self) -> bool:
        """True when a message sent to ourselves through the bus came back in time."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class LocalBus:
    def __init__(self, manager: GameManager, metrics: Metrics) -> None:
        self._manager = manager
        self._metrics = metrics

    async def publish_move(self, room: str, event: MoveEvent) -> None:
        m = self._manager
        delivered = await m.send_encoded(NAMESPACE, room, m.encode_json(NAMESPACE, "move", event.json),
                                         seq=event.seq)
        self._metrics.deliveries.inc(delivered)

    async def emit_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None:
        m = self._manager
        await m.send_encoded(NAMESPACE, room, m.encode(NAMESPACE, event, data), skip_sid)

    async def probe(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisBus:
    def __init__(self, redis: Redis, keys: Keys, instance_id: str, manager: GameManager, metrics: Metrics, *,
                 link: RedisLink, timeout_s: float) -> None:
        self._r: Any = redis  # redis-py's types do not follow decode_responses=True
        self._link = link
        self._timeout_s = timeout_s
        self._k = keys
        self._instance_id = instance_id
        self._manager = manager
        self._metrics = metrics
        self._emit = redis.register_script(rcluster.sharded(EMIT) if keys.cluster else EMIT)
        # cluster: room traffic on the rooms' own channels, each SSUBSCRIBEd on its shard
        self.shards = ShardSubscriber(redis, link, timeout_s=timeout_s, on_messages=self._handle_batch,
                                      on_lost=self._shard_lost) if keys.cluster else None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.on_control: ControlHandler | None = None
        self.subscribed = asyncio.Event()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._prober: asyncio.Task[None] | None = None
        self.probe_interval_s = 2.0
        self.rooms: RedisRoomStore | None = None  # for the log (gap filling) and what it learns
        self.on_resubscribed: Callable[[], None] | None = None  # after a lost subscription came back
        self.on_rooms_lost: Callable[[set[str]], None] | None = None  # cluster: a master lost their channels
        self._delivered: dict[str, int] = {}  # room -> last seq delivered here
        self._filling: dict[str, dict[int, str]] = {}  # room -> moves held while a gap is read

    async def publish_move(self, room: str, event: MoveEvent) -> None:
        return None  # the move's Lua script has already published it to the room's instances

    async def deliver_local(self, room: str, event: MoveEvent) -> None:
        """A move accepted while Redis is away (the room has no members elsewhere)."""
        self._metrics.offline_moves.inc()
        await self._deliver(room, event.seq, event.json)

    async def _deliver(self, room: str, seq: int, event_json: str) -> None:
        if not self._manager.rooms.get(NAMESPACE, {}).get(room) and room not in self._filling:
            # No member here (a move still on its way after the last one left): nobody to
            # deliver to, and nothing to remember, or a stale seq would outlive the room
            # (moves of a room made anew would be dropped as repeats, and a resume's replay
            # raced by a gap fill would be delivered twice).
            self._delivered.pop(room, None)
            return
        last = self._delivered.get(room)
        held = self._filling.get(room)
        if held is not None:
            if last is None or seq > last:
                held[seq] = event_json
            return
        if last is not None and seq != last + 1:
            if seq <= last:
                self._metrics.duplicate_moves.inc()
                return  # delivered already (read from the log while filling a gap)
            self._metrics.move_gaps.inc()
            self._filling[room] = {seq: event_json}
            self._spawn(self._fill(room))
            return
        self._delivered[room] = seq
        await self._send_move(room, seq, event_json)

    async def _send_move(self, room: str, seq: int, event_json: str) -> None:
        m = self._manager
        sent = await m.send_encoded(NAMESPACE, room, m.encode_json(NAMESPACE, "move", event_json), seq=seq)
        self._metrics.deliveries.inc(sent)

    async def _fill(self, room: str) -> None:
        """Deliver the moves that pub/sub lost, from the room's log, then the held ones.

        Runs while ``_filling[room]`` holds whatever arrives, so ``_delivered[room]`` cannot move
        under it. The log read gets ``redis_timeout_s`` and is not waited for beyond that (a
        cancelled redis-py call can take its time to unwind): the held moves must go out."""
        last = self._delivered.get(room, 0)
        fetched: dict[int, str] = {}
        first, missing = last + 1, 0
        held = self._filling.get(room, {})
        try:
            if self.rooms is not None:  # with Redis away, this fails within its timeout
                read = asyncio.ensure_future(self.rooms.events_after(room, last))
                done, _ = await asyncio.wait({read}, timeout=self._timeout_s)
                if read in done and not read.cancelled() and read.exception() is None:
                    fetched = {e.seq: e.json for e in read.result()[0]}
                else:
                    read.cancel()
                    read.add_done_callback(_consume)
                    log(logger, "gap_unfilled", logging.WARNING, room=room,
                        error=type(read.exception()).__name__ if read.done() and not read.cancelled() else "timeout")
            while ready := {**fetched, **held}:
                fetched = {}
                held.clear()
                for seq in sorted(ready):
                    if seq <= last:
                        continue
                    missing += seq - last - 1
                    last = seq
                    self._delivered[room] = seq
                    await self._send_move(room, seq, ready[seq])
        finally:
            self._filling.pop(room, None)
        self._metrics.moves_missing.inc(missing)
        log(logger, "gap_filled", logging.WARNING if missing else logging.INFO, room=room, from_seq=first,
            to_seq=last, missing=missing)

    def delivered(self) -> dict[str, int]:
        """Room -> the last seq delivered here (what a recovery must not let Redis fall below)."""
        return dict(self._delivered)

    def forget_room(self, room: str) -> None:
        """No member here any more: whoever joins next starts from its own join or resume."""
        self._delivered.pop(room, None)

    async def resync(self, rooms: list[str]) -> int:
        """After an outage: for each room with members here, deliver what pub/sub missed."""
        started = 0
        for room in rooms:
            if self._delivered.get(room) is None or room in self._filling or self.rooms is None:
                continue
            seq = await self.rooms.seq(room)
            last = self._delivered.get(room)
            if last is not None and room not in self._filling and seq > last:
                self._filling[room] = {}
                self._spawn(self._fill(room))
                started += 1
        return started

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def emit_room(self, room: str, event: str, data: Any, skip_sid: str | None = None) -> None:
        text = self._manager.encode(NAMESPACE, event, data)[0].data
        message = f"E{room}\n{skip_sid or ''}\n{text}"
        keys = [self._k.room(room, "insts")] + ([self._k.room_channel(room)] if self._k.cluster else [])
        await self._emit(keys=keys, args=[self._k.channel_prefix, message])

    async def _handle_batch(self, batch: list[str]) -> None:
        for message in batch:
            await self._handle(message)

    def _shard_lost(self, channels: set[str]) -> None:
        """A master went away with these room channels: their rooms recover as after an outage."""
        if self.on_rooms_lost is not None:
            self.on_rooms_lost({self._k.room_of_channel(c) for c in channels})

    async def request(self, instance_id: str, body: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Ask another instance to act; its answer, or None if it did not answer in time."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            message = {"id": request_id, "from": self._instance_id, **body}
            await self._r.publish(self._k.channel(instance_id), "C" + orjson.dumps(message).decode())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(request_id, None)

    async def probe(self) -> bool:
        nonce = uuid.uuid4().hex
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[nonce] = future
        try:
            await self._r.publish(self._k.channel(self._instance_id), "P" + nonce)
            await asyncio.wait_for(future, self._timeout_s)
            return True
        except (TimeoutError, OSError, RedisError):
            self._metrics.probe_failures.inc()
            return False
        finally:
            self._probes.pop(nonce, None)

    async def _probe_loop(self) -> None:
        """A listener can go deaf without an error (python-socketio#1581): prove it alive, or restart it."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            if await self.probe() or not await self._store_reachable():
                continue  # deaf only if Redis itself answers; an outage is the listener's own retry loop
            log(logger, "listener_deaf", logging.WARNING, action="restart")
            self._metrics.listener_restarts.inc()
            await self._restart()

    async def _restart(self) -> None:
        """A new listener; what was published to us meanwhile is caught up once it subscribes."""
        if self._task is not None:
            await stop_task(self._task)
        self.subscribed.clear()
        self._task = asyncio.create_task(self._listen(lost=True), name="gamegw-bus-listener")

    async def ensure_listening(self) -> None:
        """Redis is back: subscribe now rather than at the end of the listener's backoff."""
        if not self.subscribed.is_set():
            await self._restart()
            await asyncio.wait_for(self.subscribed.wait(), self._timeout_s)
        if self.shards is not None:
            await self.shards.settled()

    async def _store_reachable(self) -> bool:
        try:
            await self._r.ping()
            return True
        except (OSError, RedisError):
            return False

    async def start(self) -> None:
        """Subscribe, or raise why not. The gateway has just had an answer to a PING, so a first
        subscription that fails is refused (credentials, ACL), not an outage to wait out."""
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(first=first), name="gamegw-bus-listener")
        await asyncio.wait_for(first, 10)
        self._prober = asyncio.create_task(self._probe_loop(), name="gamegw-bus-probe")

    async def _listen(self, *, lost: bool = False, first: asyncio.Future[None] | None = None) -> None:
        backoff = 0.1
        channel = self._k.channel(self._instance_id)
        while True:
            try:
                async for batch in subscribe(self._link, channel):
                    for message in batch:
                        if message == SUBSCRIBED:
                            self.subscribed.set()
                            if first is not None and not first.done():
                                first.set_result(None)
                            backoff = 0.1
                            if lost:
                                log(logger, "listener_back", logging.WARNING)
                                if self.on_resubscribed is not None:
                                    self.on_resubscribed()
                            lost = False
                        else:
                            await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: resubscribe with capped backoff
                if first is not None and not first.done():  # the first subscription: start() raises it
                    first.set_exception(exc)
                    return
                self.subscribed.clear()
                lost = True
                log(logger, "listener_lost", logging.WARNING, error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _handle(self, data: str) -> None:
        kind = data[:1]
        m = self._manager
        if kind == "M":
            room, seq, event_json = data[1:].split("\n", 2)
            await self._deliver(room, int(seq), event_json)
        elif kind == "E":
            room, skip_sid, text = data[1:].split("\n", 2)
            if skip_sid and self.rooms is not None and skip_sid not in m.rooms.get(NAMESPACE, {}).get(room, {}):
                self.rooms.note_remote(room)
            await m.send_encoded(NAMESPACE, room, [eio_packet.Packet(eio_packet.MESSAGE, text)], skip_sid or None)
        elif kind == "C":
            self._spawn(self._answer(orjson.loads(data[1:])))
        elif kind == "P":
            probe = self._probes.get(data[1:])
            if probe is not None and not probe.done():
                probe.set_result(None)
        elif kind == "R":
            reply = orjson.loads(data[1:])
            future = self._pending.get(reply.get("id", ""))
            if future is not None and not future.done():
                future.set_result(reply)

    async def _answer(self, request: dict[str, Any]) -> None:
        try:
            result = await self.on_control(request) if self.on_control else {"error": "no handler"}
        except Exception as exc:
            logger.exception("control request failed")
            result = {"error": str(exc)}
        reply = {"id": request["id"], "instance": self._instance_id, **result}
        await self._r.publish(self._k.channel(request["from"]), "R" + orjson.dumps(reply).decode())

    async def aclose(self) -> None:
        if self._prober is not None:
            await stop_task(self._prober)
        if self._task is not None:
            await stop_task(self._task)
        for task in list(self._background):
            await stop_task(task)
        if self.shards is not None:
            await self.shards.aclose()


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so that asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()
