"""Nothing a client sends produces a traceback (issue 12, finding 6): every client-caused error
is one throttled log line, the connection is closed with 4400 where it is a bad packet, and the
gateway stays up. And a client's text cannot forge a line of the gateway's text log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from gamegw.server.app import PARTS
from gamegw.server.auth.tokens import mint
from gamegw.server.transport.manager import CLOSE_BOUND_S
from tests.conftest import Gateway, GatewayProcess, Player, eventually, free_port, make_settings, process_env
from tests.rawclient import RawPolling, RawWebSocket, client_frame

GatewayFactory = Callable[..., Awaitable[Gateway]]
Players = Callable[..., Awaitable[Player]]

# Websocket frames that are not Socket.IO (or not even Engine.IO): each closes its connection
# with 4400 (or, on a bare Engine.IO session, closes the transport).
BAD_FRAMES: list[str | bytes] = [
    "", "4", "42", "42garbage", "42/game,", "42/game,[", "42/game,1e400", '42/game,1["join",1e400]', "40/game,{",
    "40/game,1e400", "x", "7", "9", "b", "b!!!", "bAAA=", "4" + "9" * 5000, "44/game,{}", "49", "4\x00",
    "\u0664" + "2/game,[]", "42/game," + "[" * 2000 + "]" * 2000, '42/game,["\\ud800"]',
    b"", b"\x00", b"4", b"\xff\xfe", b'42/game,["join",{}]',  # binary where text is expected
]
# Frames Engine.IO or Socket.IO answer or ignore: at the wrong time, acks for nothing, huge numbers
ODD_FRAMES = ["2probe", "3probe", "5", "6", "0", "43/game,5[1]", '42/game,99999999999999999999999999["join",{}]',
              '42/game,["join"]', "41/nope,"]
# Long-polling bodies that are not an Engine.IO payload a client may send, or not Socket.IO
BAD_BODIES: list[bytes] = [
    b"\x1e", b"4\x1e", b"4", b"42/game,[", b"x", b"7", b"b!!!", b"d=", b"d=abc", b"4\x1e" * 17 + b"4", b"2",
    b"2probe", b"6", b"0", b"5", b"\xff\xfe", b"40/game,1e400", "\u0664".encode(), b"4" + b"9" * 100,
]
INVALID_UTF8 = b'42/game,["\xff"]'  # a text frame aiohttp itself refuses (close 1007)


class Records(logging.Handler):
    """Every WARNING-or-worse record of the gateway, python-engineio, aiohttp and asyncio."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records
                if r.exc_info or r.stack_info or "Traceback" in r.getMessage()]

    def count(self, event: str) -> int:
        return sum(r.getMessage() == event for r in self.records)


@pytest.fixture
def logs() -> Iterator[Records]:
    handler = Records()
    root, gamegw = logging.getLogger(), logging.getLogger("gamegw")
    saved = root.level, gamegw.propagate
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    gamegw.propagate = True  # even if a gamectl test in this process configured it
    yield handler
    root.removeHandler(handler)
    root.setLevel(saved[0])
    gamegw.propagate = saved[1]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    return gw.app[PARTS].metrics.registry.get_sample_value(name, labels) or 0.0


def send(ws: RawWebSocket, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        ws.writer.write(client_frame(frame, opcode=0x2))
    else:
        ws.send_text(frame)


def reasons(texts: list[str]) -> list[int]:
    return [json.loads(t[len("42/game,"):])[1]["code"] for t in texts if t.startswith('42/game,["disconnect_reason"')]


async def websocket_battery(gw: Gateway, *, joined: bool) -> None:
    for n, frame in enumerate(BAD_FRAMES):
        ws = await RawWebSocket.connect(gw.url)
        try:
            if joined:
                await ws.join_game(gw.token(f"ws{n}"))
            else:
                assert (await ws.recv_text()).startswith("0{")
            send(ws, frame)
            texts, code = await ws.closed_with(timeout=CLOSE_BOUND_S + 2)
        finally:
            ws.close()
        assert code == 1000, (frame, code)
        assert reasons(texts) == ([4400] if joined else []), (frame, texts)
    ws = await RawWebSocket.connect(gw.url)
    try:
        await ws.join_game(gw.token("odd"))
        for frame in ODD_FRAMES:
            send(ws, frame)
        assert (await ws.call("join", {"room": "r"}, ack_id=7))["ok"] is True  # still served
        ws.writer.write(client_frame(INVALID_UTF8))
        texts, code = await ws.closed_with()
    finally:
        ws.close()
    assert code == 1007 and reasons(texts) == []


async def polling_battery(gw: Gateway, *, joined: bool) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for n, body in enumerate(BAD_BODIES):
            raw = RawPolling(http, gw.url)
            if joined:
                await raw.join_game(gw.token(f"poll{n}"))
            else:
                await raw.open()
            assert await raw.post(body) in (200, 400), body
            packets, _, gone_at = await raw.stubborn_until_gone(timeout=CLOSE_BOUND_S + 2)
            assert gone_at is not None, body
            assert reasons(packets) == ([4400] if joined else []), (body, packets)
        # requests that are not Engine.IO at all
        for query in ("sid=nope", "EIO=3", "EIO=4&transport=foo", "EIO=4&transport=polling&j=x", "EIO=4&sid=",
                      "EIO=4&transport=websocket"):
            for method in ("GET", "POST", "PUT", "OPTIONS"):
                async with http.request(method, f"{gw.url}/socket.io/?{query}", data=b"4") as resp:
                    assert resp.status < 500, (method, query, resp.status)


async def raw_http_junk(gw: Gateway) -> None:
    host, port = gw.url.removeprefix("http://").split(":")
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
                 b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                 b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                 b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Version: 99\r\n\r\n",
                 b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n"):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(junk)
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(reader.read(), 2)
        finally:
            writer.transport.abort()


async def test_a_battery_of_bad_frames_and_bodies_logs_no_traceback(gateway_factory: GatewayFactory,
                                                                      players: Players, logs: Records) -> None:
    gw = await gateway_factory(ping_interval_s=0.5, ping_timeout_s=2, handshake_timeout_s=5)
    started = time.monotonic()
    for joined in (False, True):
        await websocket_battery(gw, joined=joined)
        await polling_battery(gw, joined=joined)
    await raw_http_junk(gw)
    assert logs.tracebacks() == []
    # one throttled line per bad packet at most (a burst of 20, then 2 a second)
    assert 0 < logs.count("bad_packet") <= 20 + 2 * (time.monotonic() - started) + 1
    assert logs.count("bad_http") == 2  # the bad Content-Lengths, each one line instead of aiohttp's traceback
    bad_posts = 2 * len(BAD_BODIES)
    assert metric(gw, "gamegw_bad_packets_total") == 2 * len(BAD_FRAMES) + bad_posts
    # and the gateway still serves
    p = await players(gw.url, gw.token("alice"))
    assert (await p.call("join", {"room": "r"}))["ok"] is True
    assert (await p.call("move", {"room": "r", "action": {"x": 1}}))["ok"] is True
    await eventually(lambda: _true(len(gw.app[PARTS].sio.eio.sockets) == 1), timeout=CLOSE_BOUND_S + 2)


async def test_a_thousand_empty_frames_make_a_few_log_lines(gateway_factory: GatewayFactory, logs: Records) -> None:
    """The audit's flood: an empty frame on each of 1000 bare Engine.IO sessions."""
    gw = await gateway_factory()
    started = time.monotonic()
    for _ in range(10):
        sockets = await asyncio.gather(*(RawWebSocket.connect(gw.url) for _ in range(100)))
        try:
            for ws in sockets:
                await ws.recv_text()
                ws.send_text("")
            ends = await asyncio.gather(*(ws.closed_with() for ws in sockets))
        finally:
            for ws in sockets:
                ws.close()
        assert {code for _, code in ends} == {1000}
    assert logs.tracebacks() == []
    assert metric(gw, "gamegw_bad_packets_total") == 1000
    assert len(logs.records) <= 20 + 2 * (time.monotonic() - started) + 1, len(logs.records)
    await eventually(lambda: _true(not gw.app[PARTS].sio.eio.sockets), timeout=CLOSE_BOUND_S + 2)


# -- the text log, end to end ------------------------------------------------------------------

FORGED_USER = "mallory\r\n2026-01-01 00:00:00,000 warning gamegw.gateway event=admin_kick user=root\x1b[2K"


@pytest.fixture
async def text_log_gateway() -> AsyncIterator[GatewayProcess]:
    """``gamectl serve`` with the text log on stderr, at info."""
    env = process_env("esc-1", GAMEGW_LOG_LEVEL="info", GAMEGW_LOG_FORMAT="text")
    proc = GatewayProcess(env, free_port(), "esc-1")
    try:
        await proc.ready()
        yield proc
    finally:
        proc.close()


async def test_a_client_value_with_cr_lf_and_esc_cannot_forge_a_log_line(text_log_gateway: GatewayProcess) -> None:
    gw = text_log_gateway
    ws = await RawWebSocket.connect(gw.url)
    try:
        session = await ws.join_game(mint(make_settings(), FORGED_USER))
        assert session["user"] == FORGED_USER
    finally:
        ws.close()
    bare = await RawWebSocket.connect(gw.url)
    try:
        await bare.recv_text()
        bare.send_text("40/\x1b[2K\radmin\x85,")  # a namespace is a client's text too
        _, code = await bare.closed_with()
    finally:
        bare.close()
    assert code == 1000
    gw.kill(signal.SIGTERM)
    gw.proc.wait(10)
    assert gw.proc.stderr is not None
    err = gw.proc.stderr.read().decode()
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", err), repr(err)
    lines = err.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for line in lines), lines
    assert not any("event=admin_kick" in line.split(" user=")[0] for line in lines)
    [connect] = [line for line in lines if " event=connect " in line]
    assert ' user="mallory\\r\\n2026-01-01 00:00:00,000 warning gamegw.gateway event=admin_kick user=root\\x1b[2K" ' \
        in connect
    [refuse] = [line for line in lines if " reason=invalid_namespace " in line]
    assert refuse.endswith(' namespace="/\\x1b[2K\\radmin\\u0085"')


async def _true(value: bool) -> bool:
    return value
