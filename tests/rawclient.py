"""A websocket client on a bare TCP socket, for what stock clients won't do.

It speaks just enough RFC 6455 and Engine.IO/Socket.IO to join ``/game``, and then lets a test
misbehave: send a frame of an exact size, announce a frame and never send it, or stop reading
altogether while the server writes to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

CLOSE = 0x8


def client_frame(payload: bytes, opcode: int = 0x1, *, length: int | None = None) -> bytes:
    """A masked, final frame. ``length`` announces another length than the payload's."""
    n = len(payload) if length is None else length
    head = bytes((0x80 | opcode,))
    if n < 126:
        head += bytes((0x80 | n,))
    elif n < 65536:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str, *, rcvbuf: int | None = None, path: str = "/socket.io/?EIO=4&transport=websocket",
                      headers: dict[str, str] | None = None) -> RawWebSocket:
        parsed = urlparse(url)
        sock = socket.socket()
        if rcvbuf is not None:  # before connect, so that the TCP window stays small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parsed.hostname, parsed.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write((f"GET {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{extra}\r\n").encode())
        status = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if b" 101 " not in status:
            writer.close()
            raise ConnectionError(status.decode().strip())
        return cls(reader, writer)

    async def recv(self, timeout: float = 5) -> tuple[int, bytes]:
        """The next frame: (opcode, payload). A close frame's payload starts with its code."""
        async def read() -> tuple[int, bytes]:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def recv_text(self, timeout: float = 5) -> str:
        """The next text frame, answering Engine.IO pings on the way."""
        while True:
            opcode, payload = await self.recv(timeout)
            if opcode == CLOSE:
                raise ConnectionError(f"closed with {struct.unpack('!H', payload[:2])[0] if payload else None}")
            text = payload.decode()
            if text == "2":
                self.send_text("3")
                continue
            return text

    def send_text(self, text: str) -> None:
        self.writer.write(client_frame(text.encode()))

    async def join_game(self, token: str, **auth: Any) -> dict[str, Any]:
        """Engine.IO open, Socket.IO CONNECT to /game (``auth``: more than the token, such as
        ``last_seq``); returns the ``session`` event's payload."""
        opened = await self.recv_text()
        assert opened.startswith("0"), opened
        self.send_text("40/game," + json.dumps({"token": token, **auth}))
        connected = await self.recv_text()
        assert connected.startswith("40/game,"), connected
        session = await self.recv_text()
        name, payload = json.loads(session[len("42/game,"):])
        assert name == "session", session
        return dict(payload)

    async def call(self, event: str, data: Any, ack_id: int) -> Any:
        """Emit with an ack id and wait for that ack (other packets are skipped)."""
        self.send_text(f"42/game,{ack_id}" + json.dumps([event, data]))
        prefix = f"43/game,{ack_id}"
        while True:
            text = await self.recv_text()
            if text.startswith(prefix):
                return json.loads(text[len(prefix):])[0]

    async def until(self, prefix: str, timeout: float = 5) -> list[str]:
        """Text frames up to and with the first that starts with ``prefix`` (e.g. ``41/game``)."""
        texts = [await self.recv_text(timeout)]
        while not texts[-1].startswith(prefix):
            texts.append(await self.recv_text(timeout))
        return texts

    async def closed_with(self, timeout: float = 5) -> tuple[list[str], int | None]:
        """Read until the server closes: the text frames on the way, and the close code (None: cut)."""
        texts: list[str] = []
        try:
            while True:
                opcode, payload = await self.recv(timeout)
                if opcode == CLOSE:
                    return texts, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                texts.append(payload.decode(errors="replace"))
        except (asyncio.IncompleteReadError, ConnectionError):
            return texts, None

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass
class Stubborn:
    """What a client that ignores every close saw: its text frames, when ``disconnect_reason``
    came, when the server's close frame came and with which code, when the TCP connection ended
    (monotonic; None: not within the time given)."""

    texts: list[str] = field(default_factory=list)
    reason_at: float = 0.0
    close_code: int | None = None
    ended_at: float | None = None


async def stubborn_until_cut(ws: RawWebSocket, *, timeout: float = 10) -> Stubborn:
    """Be the client that ignores every close: answer pings, send a pong of its own every 0.1 s,
    never answer a close frame, until the server ends the TCP connection."""
    seen = Stubborn()
    loop = asyncio.get_running_loop()

    async def keep_talking() -> None:
        while not ws.writer.is_closing():
            ws.send_text("3")
            await asyncio.sleep(0.1)

    talking = asyncio.create_task(keep_talking())
    try:
        while True:
            opcode, payload = await ws.recv(timeout)
            if opcode == CLOSE:  # heard, and not answered
                seen.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                continue
            text = payload.decode(errors="replace")
            if text == "2":
                ws.send_text("3")
            seen.texts.append(text)
            if "disconnect_reason" in text and not seen.reason_at:
                seen.reason_at = loop.time()
    except (asyncio.IncompleteReadError, ConnectionError):
        seen.ended_at = loop.time()
    except TimeoutError:
        pass
    finally:
        talking.cancel()
        ws.close()
    return seen


class RawPolling:
    """An Engine.IO long-polling session driven by hand (aiohttp requests, packets as text)."""

    def __init__(self, http: Any, url: str) -> None:
        self.http = http
        self.url = url
        self.sid = ""

    @property
    def endpoint(self) -> str:
        return f"{self.url}/socket.io/?EIO=4&transport=polling&sid={self.sid}"

    async def open(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/socket.io/?EIO=4&transport=polling") as resp:
            opened = await resp.text()
        assert opened.startswith("0{"), opened
        data: dict[str, Any] = json.loads(opened[1:])
        self.sid = data["sid"]
        return data

    async def post(self, body: str | bytes) -> int:
        async with self.http.post(self.endpoint, data=body if isinstance(body, bytes) else body.encode()) as resp:
            await resp.read()
            return int(resp.status)

    async def poll(self) -> tuple[int, list[str]]:
        async with self.http.get(self.endpoint) as resp:
            body = await resp.text()
            return resp.status, body.split("\x1e") if resp.status == 200 else [body]

    async def join_game(self, token: str) -> dict[str, Any]:
        await self.open()
        assert await self.post("40/game," + json.dumps({"token": token})) == 200
        packets: list[str] = []
        while not any(p.startswith('42/game,["session"') for p in packets):
            status, got = await self.poll()
            assert status == 200, got
            packets += got
        [session] = [p for p in packets if p.startswith('42/game,["session"')]
        return dict(json.loads(session[len("42/game,"):])[1])

    async def stubborn_until_gone(self, *, timeout: float = 10) -> tuple[list[str], float, float | None]:
        """Poll on and on, answering pings, whatever the server says. Returns the packets, when
        ``disconnect_reason`` came and when a request was first refused (None: not within ``timeout``)."""
        loop = asyncio.get_running_loop()
        packets: list[str] = []
        reason_at = 0.0
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            status, got = await self.poll()
            if status != 200:
                return packets, reason_at, loop.time()
            packets += got
            if not reason_at and any("disconnect_reason" in p for p in got):
                reason_at = loop.time()
            if "2" in got and await self.post("3") != 200:
                return packets, reason_at, loop.time()
        return packets, reason_at, None
