"""The client manager: python-socketio's extension point for how packets reach sockets.

:class:`GameManager` keeps the library's bookkeeping and changes two things:

* a broadcast is encoded once and written to each recipient's queue in a plain loop, instead
  of one asyncio task per recipient (the library's default, which dominates CPU at scale);
* a hook runs once a connection is fully established (after the CONNECT packet is queued), so
  that the gateway's ``session`` event is always the first event a client sees;
* a connection can be *paused* while it resumes: room events for it are held back, so that the
  replayed moves reach it first and no live move overtakes them or arrives twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet
from socketio import packet
from socketio.async_manager import AsyncManager

from ..logs import stop_task
from ..protocol.codes import AckCode
from ..protocol.errors import ActionError
from .websocket import CLOSE_BOUND_S, Transports, text_frame

ConnectedHook = Callable[[str, str], Awaitable[None]]


class GameServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server, with single packets (acks, events to one sid) written straight
    to the connection's websocket when nothing is queued ahead of them, one namespace served
    (the others reach the catch-all namespace, which refuses them, and their transport is ended),
    and Engine.IO sessions that the server ends itself instead of waiting for the client."""

    def __init__(self, *args: Any, namespace: str = "/", handshake_timeout_s: float = 0.0,
                 on_handshake_timeout: Callable[[str, dict[str, Any] | None], None] | None = None,
                 engineio_class: type[engineio.AsyncServer] = engineio.AsyncServer, **kwargs: Any) -> None:
        self.engineio_class = engineio_class  # the Engine.IO server (server.eio's, for conformance)
        self.transports: Transports | None = None
        self.namespace = namespace  # the one namespace served
        self.handshake_timeout_s = handshake_timeout_s  # Engine.IO sessions must join it by then
        self.on_handshake_timeout = on_handshake_timeout
        self.on_engineio_open: Callable[[str, dict[str, Any]], bool] | None = None  # False: over the limit
        self.on_unserved: Callable[[str], None] | None = None  # (eio_sid) another namespace was refused
        self.on_bad_event: Callable[[str, Any], None] | None = None
        self.on_bad_packet: Callable[[str, str], None] | None = None  # (eio_sid, "malformed" or "too_big")
        self._binary_bytes: dict[str, int] = {}  # eio_sid -> bytes of a binary packet's attachments so far
        self._handshake_timers: dict[str, asyncio.TimerHandle] = {}
        self._ending: dict[str, asyncio.TimerHandle] = {}  # eio_sid -> its cut, CLOSE_BOUND_S after the end
        self._closing: set[asyncio.Task[Any]] = set()
        super().__init__(*args, **kwargs)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return self.engineio_class

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        await super()._handle_eio_connect(eio_sid, environ)
        allowed = self.on_engineio_open is None or self.on_engineio_open(eio_sid, environ)
        deadline = self.handshake_timeout_s
        if not allowed:  # over the per-address limit: it lives just long enough to be told so at its CONNECT
            deadline = min(CLOSE_BOUND_S, deadline or CLOSE_BOUND_S)
        if deadline > 0:
            loop = asyncio.get_running_loop()
            self._handshake_timers[eio_sid] = loop.call_later(deadline, self._handshake_overdue, eio_sid, allowed)

    def _handshake_overdue(self, eio_sid: str, allowed: bool = True) -> None:
        """A transport that never joined the namespace holds resources for nothing."""
        self._handshake_timers.pop(eio_sid, None)
        if eio_sid in self.eio.sockets and not self.manager.sid_from_eio_sid(eio_sid, self.namespace):
            if allowed and self.on_handshake_timeout is not None:
                self.on_handshake_timeout(eio_sid, self.environ.get(eio_sid))
            self.close_transport(eio_sid)

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        timer = self._handshake_timers.get(eio_sid)
        if timer is not None and self.manager.sid_from_eio_sid(eio_sid, self.namespace):
            del self._handshake_timers[eio_sid]  # joined in time: nothing to wait for
            timer.cancel()
        if (namespace or "/") != self.namespace and self.on_unserved is not None:
            self.on_unserved(eio_sid)  # the refusal is out (the catch-all namespace's): the transport ends

    def close_transport(self, eio_sid: str) -> None:
        """End an Engine.IO session from synchronous code (see :meth:`end_transport`)."""
        self._spawn(self.end_transport(eio_sid))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def end_transport(self, eio_sid: str) -> None:
        """End an Engine.IO session from the server's side, whatever the client does.

        What is queued goes first. Then, as Node's engine.io does, a websocket is closed with a
        close frame (python-engineio's writer would wait for the client to go quiet; and an
        Engine.IO CLOSE packet ahead of the frame races python-engineio's client, which then
        hangs for a ping interval), and a long-polling session gets Engine.IO's CLOSE and is
        closed once the client has fetched it (python-engineio refuses a GET on a closed
        session: what was queued would never be fetched). Nothing the client sends from now on
        is handled. :data:`CLOSE_BOUND_S` later, what is still there is cut: the websocket's TCP
        connection, the polling session (a client that does not poll cannot be told; its next
        request gets 400).
        """
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or eio_sid in self._ending:
            return
        self._ending[eio_sid] = asyncio.get_running_loop().call_later(CLOSE_BOUND_S, self._cut, eio_sid)
        if socket.closed or socket.closing:
            return
        if socket.upgraded:
            await socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
            socket.end_transport()  # what is queued goes, then the websocket's close frame
        else:
            await socket.send(eio_packet.Packet(eio_packet.CLOSE))
            self._spawn(self._close_when_fetched(eio_sid, socket))

    async def drop_transport(self, eio_sid: str) -> None:
        """End a long-polling session at once: Engine.IO closes the session on a body that is not
        an Engine.IO payload, and its next request gets 400 (a pending GET gets CLOSE)."""
        socket = self.eio.sockets.get(eio_sid)
        if socket is None or socket.upgraded:
            await self.end_transport(eio_sid)
            return
        await socket.end(self.reason.TRANSPORT_ERROR)  # a ConformantSocket (server/transport/eio.py)
        self.eio.sockets.pop(eio_sid, None)

    async def _close_when_fetched(self, eio_sid: str, socket: Any) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(socket.queue.join(), CLOSE_BOUND_S)
        await socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
        socket.queue.put_nowait(None)  # a GET that came in the meantime ends, empty
        self.eio.sockets.pop(eio_sid, None)

    def _cut(self, eio_sid: str) -> None:
        self._ending.pop(eio_sid, None)
        if self.transports is not None:
            self.transports.abort(eio_sid)
        self.eio.sockets.pop(eio_sid, None)

    async def shutdown(self) -> None:
        for timer in self._ending.values():
            timer.cancel()
        self._ending.clear()
        for task in list(self._closing):
            await stop_task(task)
        await super().shutdown()

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        timer = self._handshake_timers.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()
        self._binary_bytes.pop(eio_sid, None)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        """A packet python-socketio cannot parse is a protocol violation, not a server error
        (the library logged a traceback per packet: a log flood anyone could start). Binary
        attachments count against ``max_message_bytes`` as a whole: the library would collect any
        number of them for a packet that announces a million."""
        if eio_sid in self._binary_packet:
            size = self._binary_bytes.get(eio_sid, 0) + len(data)
            if size > self.eio.max_http_buffer_size:
                self._binary_packet.pop(eio_sid, None)
                self._binary_bytes.pop(eio_sid, None)
                if self.on_bad_packet is not None:
                    self.on_bad_packet(eio_sid, "too_big")
                return
            self._binary_bytes[eio_sid] = size
        if eio_sid in self._ending:  # the server is ending this transport: nothing more is handled
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            self._binary_packet.pop(eio_sid, None)
            self._binary_bytes.pop(eio_sid, None)
            if self.on_bad_packet is not None:
                self.on_bad_packet(eio_sid, "malformed")
            return
        if eio_sid not in self._binary_packet:
            self._binary_bytes.pop(eio_sid, None)

    async def _handle_event_internal(self, server: Any, sid: str, eio_sid: str, data: Any, namespace: str,
                                     id: int | None) -> None:
        """Client events only: python-socketio would hand a client's ``connect`` or ``disconnect``
        event to ``on_connect``/``on_disconnect`` with the client's own arguments (a forged
        environ, a fake close), and fails on an event name that is not a string."""
        name = data[0] if isinstance(data, list) and data else None
        if not isinstance(name, str) or name in self.reserved_events:
            if self.on_bad_event is not None:
                self.on_bad_event(sid, name)
            if id is not None:
                error = ActionError(AckCode.BAD_REQUEST, "an event name must be a string and not a reserved one")
                await server._send_packet(eio_sid, self.packet_class(packet.ACK, namespace=namespace, id=id,
                                                                     data=[error.ack()]))
            return
        await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        ws = self.transports.writable(eio_sid) if self.transports is not None else None
        if ws is not None:
            encoded = pkt.encode()
            if isinstance(encoded, str):
                ws.write(text_frame(("4" + encoded).encode()))
                return
        await super()._send_packet(eio_sid, pkt)


class GameManager(AsyncManager):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.on_connected: ConnectedHook | None = None
        self.paused: dict[str, list[tuple[str, int | None, list[Any]]]] = {}  # sid -> (room, seq, pkts)
        # sid -> room -> the last seq a resume's replay sent it: a live move up to that seq that
        # reaches the connection after it was unpaused (a gap fill racing the replay) is skipped
        self.floors: dict[str, dict[str, int]] = {}
        # sid -> room -> what reached the connection while it was joining the room: moves up to
        # the seq its join returns are not its own (they precede it), the rest go out after them
        self.joining: dict[str, dict[str, list[tuple[int | None, list[Any]]]]] = {}
        self.transports: Transports | None = None  # set by create_app: direct websocket writes
        # (namespace, sid) -> the rooms it is in, None (the namespace's) and its own included:
        # python-socketio finds a connection's rooms by testing every room of the namespace,
        # each connection's own among them, so every disconnect cost O(connections); 16,000
        # clients leaving at once kept the gateway busy for minutes (py-spy: basic_disconnect 90%)
        self._rooms_of: dict[tuple[str, str], dict[str | None, None]] = {}

    def basic_enter_room(self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of.setdefault((namespace, sid), {})[room] = None

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        mine = self._rooms_of.get((namespace, sid))
        if mine is not None:
            mine.pop(room, None)
            if not mine:
                del self._rooms_of[(namespace, sid)]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self._rooms_of.get((namespace, sid), ()) if r is not None]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """python-socketio's, with the connection's rooms from the index instead of a scan."""
        for room in list(self._rooms_of.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if sid in pending.get(namespace, ()):
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    async def connect(self, sid: str, namespace: str) -> Any:
        result = await super().connect(sid, namespace)
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        socket = self.server.eio.sockets.get(eio_sid)
        if socket is None or socket.closed:
            # The transport closed while the connect handler ran: python-socketio skipped the
            # disconnect handler then (the connection was not connected yet), which left the
            # connection, its session and its registry entry behind. It is a drop.
            await self.server._handle_disconnect(eio_sid, namespace, self.server.reason.TRANSPORT_CLOSE)
            return result
        if self.on_connected is not None:
            await self.on_connected(sid, namespace)
        return result

    def encode(self, namespace: str, event: str, data: Any) -> list[Any]:
        """The Engine.IO packets of one event, to be written to any number of sockets."""
        args = [event] if data is None else [event, data]
        pkt = self.server.packet_class(packet.EVENT, namespace=namespace, data=args)
        encoded = pkt.encode()
        if not isinstance(encoded, list):
            encoded = [encoded]
        return [eio_packet.Packet(eio_packet.MESSAGE, p) for p in encoded]

    def encode_json(self, namespace: str, event: str, data_json: str) -> list[Any]:
        """Like :meth:`encode`, for a payload that is already JSON text (no re-encoding)."""
        head = str(packet.EVENT) + (namespace + "," if namespace != "/" else "")
        return [eio_packet.Packet(eio_packet.MESSAGE, head + '["' + event + '",' + data_json + "]")]

    async def send_encoded(self, namespace: str, room: str, pkts: list[Any], skip_sid: str | None = None,
                           seq: int | None = None) -> int:
        """Write already-encoded packets to every local member of ``room``; return how many.

        ``seq`` is the move's sequence number, for a paused connection to skip it once resumed
        if the replay already carried it.
        """
        members = self.rooms.get(namespace, {}).get(room)
        if not members:
            return 0
        send = self.server._send_eio_packet
        paused = self.paused
        joining = self.joining
        transports = self.transports
        frame: bytes | None = None
        single = len(pkts) == 1 and isinstance(pkts[0].data, str)
        count = 0
        for sid, eio_sid in list(members.items()):
            if sid == skip_sid:
                continue
            if paused and sid in paused and room != sid:  # what is for it alone is never held
                paused[sid].append((room, seq, pkts))
                continue
            if joining and sid in joining and room in joining[sid]:
                joining[sid][room].append((seq, pkts))
                continue
            if self.floors and seq is not None and sid in self.floors and self._below_floor(sid, room, seq):
                continue
            count += 1
            ws = transports.writable(eio_sid) if transports is not None and single else None
            if ws is not None:
                if frame is None:  # the broadcast's websocket frame, built once for every recipient
                    frame = text_frame(pkts[0].encode().encode())
                ws.write(frame)
                continue
            for p in pkts:
                await send(eio_sid, p)
        return count

    def _below_floor(self, sid: str, room: str, seq: int) -> bool:
        floors = self.floors[sid]
        floor = floors.get(room)
        if floor is None:
            return False
        if seq <= floor:
            return True
        del floors[room]  # the live stream has passed the replay: no more checks for this room
        if not floors:
            del self.floors[sid]
        return False

    async def send_packets(self, eio_sid: str, pkts: list[Any]) -> None:
        """Packets to one connection, by the same road a broadcast takes (straight to the
        websocket when nothing is queued), so that they cannot be overtaken by a later one."""
        ws = self.transports.writable(eio_sid) if self.transports is not None else None
        for p in pkts:
            if ws is not None and isinstance(p.data, str):
                ws.write(text_frame(p.encode().encode()))
            else:
                await self.server._send_eio_packet(eio_sid, p)

    def hold(self, sid: str, room: str) -> None:
        """The connection is joining ``room``: keep what the room sends it until :meth:`release`."""
        self.joining.setdefault(sid, {})[room] = []

    async def release(self, namespace: str, sid: str, room: str, floor: int | None) -> None:
        """The join is over. With ``floor`` (the seq it returned), send what was held, skipping
        moves up to ``floor``, and skip any that still arrive; without (the join failed), drop it."""
        rooms = self.joining.get(sid)
        held = rooms.pop(room, []) if rooms is not None else []
        if rooms is not None and not rooms:
            del self.joining[sid]
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        if floor is None or eio_sid is None:
            return
        self.floors.setdefault(sid, {})[room] = floor
        for seq, pkts in held:
            if seq is None or seq > floor:
                await self.send_packets(eio_sid, pkts)

    def pause(self, sid: str) -> None:
        self.paused.setdefault(sid, [])

    async def unpause(self, namespace: str, sid: str, replayed: dict[str, int]) -> int:
        """Send what was held back, skipping moves the replay already sent (seq <= replayed[room])."""
        held = self.paused.pop(sid, [])
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        if eio_sid is None:
            return 0
        if replayed:
            self.floors[sid] = dict(replayed)
        sent = 0
        for room, seq, pkts in held:
            if seq is not None and seq <= replayed.get(room, -1):
                continue
            await self.send_packets(eio_sid, pkts)
            sent += 1
        return sent

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None, skip_sid: Any = None,
                   callback: Any = None, to: Any = None, **kwargs: Any) -> None:
        room = to or room
        if callback is not None or room is None or not isinstance(room, str) or isinstance(skip_sid, list):
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs)
            return
        if isinstance(data, tuple):
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid, **kwargs)
            return
        await self.send_encoded(namespace, room, self.encode(namespace, event, data), skip_sid)
