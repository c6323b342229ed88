"""`gamectl serve --workers N` serves every transport: sticky routing by the worker in the sid.

The parent accepts every connection and hands it to a worker: a request that carries an
Engine.IO sid to the worker that made it (each worker's sids start with ``w<k>.``), anything else
round-robin (server/transport/sticky.py). Real processes, a real redis-server, real clients: the
official socket.io-client with its default options (long-polling first), python-socketio forced
to stay on long-polling, and raw HTTP where the routing itself is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gamegw.server.auth.tokens import mint
from tests.conftest import eventually, free_port, make_settings, process_env
from tests.integration.test_js_client import JS_DIR, node_client  # noqa: F401  (the session fixture)
from tests.integration.test_js_resume import NodePlayer

GAMECTL = str(Path(sys.executable).with_name("gamectl"))
CROWD = JS_DIR / "crowd.js"
ROOM = "r"
WAIT_S = 20
SETTINGS = make_settings()
ADMIN = {"Authorization": "Bearer " + mint(SETTINGS, "ops", role="admin")}


async def start_workers(redis_url: str, redis_prefix: str, **variables: str
                        ) -> tuple[asyncio.subprocess.Process, str]:
    """``gamectl serve --workers 2`` (instances gw-w1 and gw-w2), ready; the parent and its URL."""
    port = free_port()
    env = process_env("gw", GAMEGW_REDIS_PREFIX=redis_prefix, GAMEGW_LOG_LEVEL="warning",
                      GAMEGW_HEARTBEAT_INTERVAL_S="0.2", GAMEGW_HEARTBEAT_TTL_S="1.0", **variables)
    proc = await asyncio.create_subprocess_exec(GAMECTL, "serve", "--workers", "2", "--port", str(port),
                                                "--redis", redis_url, env=env)
    url = f"http://127.0.0.1:{port}"

    async def both_ready() -> bool:
        try:
            return sorted(c["instance"] for c in await admin_get(url, "/admin/instances", "instances")
                          ) == ["gw-w1", "gw-w2"]
        except aiohttp.ClientError:
            return False

    try:
        await eventually(both_ready, timeout=WAIT_S, interval=0.2)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, url


@contextlib.asynccontextmanager
async def two_workers(redis_url: str, redis_prefix: str, **variables: str) -> AsyncIterator[str]:
    """:func:`start_workers`, stopped with SIGTERM at the end, which must exit 0."""
    proc, url = await start_workers(redis_url, redis_prefix, **variables)
    try:
        yield url
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def admin_get(url: str, path: str, key: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + path, headers=ADMIN) as resp:
        return list((await resp.json())[key])


async def where(url: str, user: str) -> list[tuple[str, str, str]]:
    """(instance, sid, state) of each registry entry of ``user``, cluster-wide."""
    return [(c["instance_id"], c["sid"], c["state"])
            for c in await admin_get(url, f"/admin/connections?user={user}", "connections")]


def worker_of_sid(sid: str) -> str:
    """The instance whose sids start like this one: 'w2.xyz' -> 'gw-w2'."""
    return "gw-" + sid.split(".", 1)[0]


# -- the official JS client, default options -------------------------------------------------------


USERS = [f"p{i}" for i in range(10)]


def seqs(crowd: NodePlayer, user: str) -> list[int]:
    return [line["seq"] for line in crowd.lines if line.get("event") == "move" and line["user"] == user]


async def acks(crowd: NodePlayer, users: list[str], count: int, start: int) -> dict[str, list[dict[str, Any]]]:
    """Each of ``users`` sends ``count`` moves at once; their acks, by user."""
    before = sum("acks" in line for line in crowd.lines)
    await crowd.send({"cmd": "moves", "users": users, "count": count, "start": start})

    async def answered() -> bool:
        return sum("acks" in line for line in crowd.lines) > before

    await eventually(answered, timeout=WAIT_S, interval=0.02)
    got: dict[str, list[dict[str, Any]]] = [line["acks"] for line in crowd.lines if "acks" in line][-1]
    return got


async def all_saw(crowd: NodePlayer, total: int) -> None:
    async def done() -> bool:
        return all(len(seqs(crowd, u)) >= total for u in USERS)

    try:
        await eventually(done, timeout=WAIT_S, interval=0.05)
    except AssertionError:
        pytest.fail(f"moves seen: { {u: seqs(crowd, u) for u in USERS} }, expected {total} each")


async def test_default_js_clients_play_and_resume_on_two_workers(redis_server, redis_prefix,
                                                                 node_client):  # noqa: F811
    """Ten official socket.io-client players with default options (polling first, then the
    upgrade): all connect, spread over both workers, play in one room and see every move in seq
    order; one is dropped, the others play on, and it comes back (polling first again) and
    resumes with last_seq, getting exactly what it missed."""
    async with two_workers(redis_server.url, redis_prefix) as url:
        crowd = await NodePlayer.start(node_client, {
            "url": url, "users": USERS, "tokens": {u: mint(SETTINGS, u) for u in USERS}, "room": ROOM,
            "timeoutMs": 10000}, script=CROWD)
        try:
            ready = await crowd.wait_line("ready", "every player connected, upgraded and joined", timeout=WAIT_S)
            for user in USERS:
                assert (ready[user]["opened"], ready[user]["upgrades"]) == (["polling"], ["websocket"]), user
                assert ready[user]["session"]["resumed"] is False and ready[user]["join"]["ok"] is True
            placed = {u: await where(url, u) for u in USERS}
            for user in USERS:  # each session lives where its sid says, and only there
                [(instance, sid, state)] = placed[user]
                assert (sid, state) == (ready[user]["session"]["sid"], "connected")
                assert instance == worker_of_sid(sid)
            assert {i for [(i, _, _)] in placed.values()} == {"gw-w1", "gw-w2"}

            # Everyone plays; everyone sees every move, in seq order.
            first = await acks(crowd, USERS, 2, 0)
            assert sorted(a["seq"] for u in USERS for a in first[u]) == list(range(1, 21))
            await all_saw(crowd, 20)

            # p0 is dropped (its TCP connection cut); the rest play on before it is back. Its client
            # waits 0.5 to 1.5 s before reconnecting (default options), and a reconnect inside
            # block_s would be cut as by a dead network (the poll hangs for a ping timeout): 0.4 s.
            async with aiohttp.ClientSession() as http, http.post(
                    url + "/admin/drop", json={"user": "p0", "block_s": 0.4}, headers=ADMIN) as resp:
                assert resp.status == 200 and (await resp.json())["count"] == 1
            missed = await acks(crowd, USERS[1:], 1, 2)
            assert sorted(a["seq"] for u in USERS[1:] for a in missed[u]) == list(range(21, 30))
            assert not [line for line in crowd.lines if "resumed" in line], "p0 came back before the missed moves"

            # p0's client reconnects by itself (default options: polling first) and resumes.
            resumed = await crowd.wait_line("resumed", "p0's second session event", timeout=WAIT_S)
            assert resumed["user"] == "p0"
            assert (resumed["session"]["resumed"], resumed["session"]["rooms"]) == (True, [ROOM])
            last = await acks(crowd, USERS, 1, 3)
            assert sorted(a["seq"] for u in USERS for a in last[u]) == list(range(30, 40))
            await all_saw(crowd, 39)
            [(instance, sid, state)] = await where(url, "p0")
            assert (sid, state, instance) == (resumed["session"]["sid"], "connected", worker_of_sid(sid))
            await crowd.send({"cmd": "finish"})
            report = await crowd.wait_line("report", "final report")
        finally:
            await crowd.aclose()

    for user in USERS:  # every move exactly once, in order, for everyone, p0 included
        assert seqs(crowd, user) == list(range(1, 40)), user
        assert (report[user]["connected"], report[user]["transport"]) == (True, "websocket")
    # p0 opened over long-polling each time (a refused attempt while blocked opens too), and upgraded
    assert set(report["p0"]["opened"]) == {"polling"} and len(report["p0"]["opened"]) >= 2
    assert set(report["p0"]["upgrades"]) == {"websocket"} and len(report["p0"]["upgrades"]) >= 2
    assert [s["resumed"] for s in report["p0"]["sessions"]] == [False, True]
    assert {len(report[u]["sessions"]) for u in USERS[1:]} == {1}


# -- long-polling that never upgrades ----------------------------------------------------------------


async def test_polling_only_clients_stay_with_their_worker(redis_server, redis_prefix, players):
    """python-socketio clients that never leave long-polling: every request of a session (each on
    a connection of its own) reaches the worker that holds it, or the session would end with a
    400; they play in one room across both workers."""
    async with two_workers(redis_server.url, redis_prefix) as url:
        ps = [await players(url, mint(SETTINGS, f"q{i}"), transports=["polling"]) for i in range(6)]
        for p in ps:
            assert (await p.call("join", {"room": ROOM}))["ok"] is True
        placed = {}
        for i, p in enumerate(ps):
            assert p.client.eio.current_transport == "polling"
            [(instance, sid, state)] = await where(url, f"q{i}")
            assert (sid, state) == (p.client.get_sid("/game"), "connected")
            assert instance == worker_of_sid(sid) == worker_of_sid(p.client.eio.sid)
            placed[i] = instance
        assert set(placed.values()) == {"gw-w1", "gw-w2"}
        for round_ in range(3):
            for i, p in enumerate(ps):
                ack = await p.call("move", {"room": ROOM, "action": {"i": round_, "by": i}})
                assert ack == {"ok": True, "seq": round_ * len(ps) + i + 1}
        total = 3 * len(ps)
        for p in ps:
            assert [m["seq"] for m in await p.wait_for("move", total)] == list(range(1, total + 1))
            assert p.client.connected and p.client.eio.current_transport == "polling"
        for p in ps:
            await p.disconnect()


async def handshake(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 200
        return str(json.loads((await resp.text())[1:])["sid"])


def connect_packet(user: str) -> bytes:
    return b"40/game," + json.dumps({"token": mint(SETTINGS, user)}).encode()


async def test_one_connection_pool_carries_sessions_of_both_workers(redis_server, redis_prefix):
    """A client with one pooled connection (a browser's keep-alive) polls for sessions on both
    workers in turn: each response closes its connection, so the next request is routed anew and
    never reaches a worker with another worker's sid."""
    async with two_workers(redis_server.url, redis_prefix) as url:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
            sids: dict[str, str] = {}
            for _ in range(6):  # round-robin: two handshakes give one session on each worker
                sid = await handshake(http, url)
                sids.setdefault(worker_of_sid(sid), sid)
            assert sorted(sids) == ["gw-w1", "gw-w2"]
            for n, (instance, sid) in enumerate(sorted(sids.items())):
                async with http.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                     data=connect_packet(f"k{n}")) as resp:
                    assert (resp.status, await resp.text()) == (200, "ok"), instance
            for n, (instance, sid) in enumerate(sorted(sids.items())):
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}") as resp:
                    assert resp.status == 200, instance
                    assert '"session"' in await resp.text()
                    assert resp.headers["Connection"] == "close"  # what keeps the next request routed
                [(where_, eio_sid, _)] = await where(url, f"k{n}")
                assert where_ == instance == worker_of_sid(eio_sid)
            # a sid of a worker that does not exist, or one unknown to its worker: Engine.IO's 400
            for sid in ("w9." + sids["gw-w1"][3:], "w2." + sids["gw-w1"][3:]):
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}") as resp:
                    assert resp.status == 400, sid


async def raw(url: str, head: bytes, rest: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request whose request line arrives in two parts, ``head`` then ``rest``."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        await asyncio.sleep(0.2)  # the router has peeked at the part and waits for the rest
        writer.write(rest)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), WAIT_S)  # Connection: close: up to EOF
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(response.split(b" ", 2)[1])
    return status, response.partition(b"\r\n\r\n")[2]


async def test_a_request_line_in_parts_is_routed_by_its_sid(redis_server, redis_prefix):
    """The router waits for the whole request line before it routes: a sid that comes in a
    later TCP segment still takes the request to its worker (round-robin would miss half)."""
    async with two_workers(redis_server.url, redis_prefix) as url:
        async with aiohttp.ClientSession() as http:
            sids = {worker_of_sid(sid): sid for sid in [await handshake(http, url) for _ in range(2)]}
        assert sorted(sids) == ["gw-w1", "gw-w2"]
        for n, sid in enumerate(sids.values()):
            body = connect_packet(f"s{n}")
            status, text = await raw(url, b"POST /socket.io/?EIO=4&transport=polling&si",
                                     f"d={sid} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert (status, text) == (200, b"ok")
            status, text = await raw(url, b"GET /socket.io/?EIO=4&transport=polling&s",
                                     f"id={sid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 200 and b'"session"' in text


async def test_websocket_only_still_refuses_polling(gateway_factory):
    """websocket_only (an operator's choice now, no longer the workers'): polling gets the 400."""
    gw = await gateway_factory(websocket_only=True)
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/socket.io/?EIO=4&transport=polling") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "polling_unavailable"


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited and not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_workers_stop_when_the_parent_dies(redis_server, redis_prefix):
    """SIGKILL to the parent (no chance to pass anything on): each worker sees its channel end,
    drains and exits, instead of serving on with nobody routing to it."""
    proc, _ = await start_workers(redis_server.url, redis_prefix)
    workers = children(proc.pid)
    try:
        assert len(workers) == 2 and all(alive(pid) for pid in workers)
        proc.kill()
        await proc.wait()

        async def all_gone() -> bool:
            return not any(alive(pid) for pid in workers)

        await eventually(all_gone, timeout=WAIT_S, interval=0.1)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_dead_worker_stops_the_rest(redis_server, redis_prefix):
    """SIGKILL to one worker: the parent stops the other one (its share of the connections
    would go nowhere) and exits 1."""
    proc, _ = await start_workers(redis_server.url, redis_prefix)
    workers = children(proc.pid)
    try:
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 1
        assert not alive(workers[1])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_workers_on_a_taken_port_fail_with_one_line():
    """The parent binds the port before any worker starts: a taken one is the usual one-line error."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            GAMECTL, "serve", "--workers", "2", "--port", str(port), "--redis", "redis://127.0.0.1:1/0",
            env=process_env("gw"), stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use".encode() in err and b"Traceback" not in err


async def test_a_connection_that_sends_no_request_line_is_closed(redis_server, redis_prefix):
    """The parent waits handshake_timeout_s for a request line (nothing, or half of one), then
    closes the connection: a silent client holds nothing in the parent for long."""
    async with two_workers(redis_server.url, redis_prefix, GAMEGW_HANDSHAKE_TIMEOUT_S="1") as url:
        host, port = url.removeprefix("http://").split(":")
        for sent in (b"", b"GET /socket.io/?EIO=4&transport=polling&sid=w1"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(sent)
            started = time.monotonic()
            try:  # closed, unanswered: an end of file, or a reset where the half line was left unread
                assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
            except ConnectionResetError:
                pass
            assert 0.9 < time.monotonic() - started < 5
            writer.close()
            with contextlib.suppress(ConnectionResetError):
                await writer.wait_closed()


@pytest.mark.parametrize(("fd", "says"), [("999", "is not an open socket"), ("0", "is not an open socket")])
async def test_a_handoff_fd_that_is_no_channel_fails_with_one_line(fd, says):
    """worker_handoff_fd is internal; set by hand to something else, the start fails cleanly."""
    proc = await asyncio.create_subprocess_exec(
        GAMECTL, "serve", env=process_env("gw", GAMEGW_WORKER_HANDOFF_FD=fd), stdin=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 1
    assert f"worker_handoff_fd: {fd} {says}".encode() in err and b"Traceback" not in err
