"""The clients in ``examples/`` play a whole game against a real gateway (issue 15).

Each example runs as a user would run it (``node examples/node-client.js``, ``python
examples/python_client.py``, ``examples/browser.html`` in headless Chromium), as ``alice``, with
the gateway's address and a token from its environment (the page: from its query string), and
``MOVES=4``: it leaves once it has seen four moves. The test plays ``bob`` with a python-socketio
client in the same room, and the same story for all three:

1. alice connects (``session``, not resumed), joins, and moves: seq 1; bob moves: seq 2.
2. alice's connection is cut as a network fault would cut it (a drop); bob moves (seq 3) while she
   is away. Her client comes back by itself and resumes: ``session`` with ``resumed: true`` and the
   same ``session_id``, then seq 3 replayed (she passed ``auth.last_seq``); bob hears
   ``player_disconnected`` then ``player_reconnected``.
3. The gateway closes her on purpose with ``4000 shutdown`` (reconnect: true): she prints the
   ``disconnect_reason``, reconnects herself, and resumes again.
4. bob moves (seq 4); alice has seen four moves and leaves: bob hears ``player_left`` with reason
   ``left`` (no third ``player_disconnected``) and no session of alice's waits in grace.

Each example prints one ``<what> <json>`` line per thing it sees; the page logs the same lines to
the console, which Chromium writes to its stderr (``--enable-logging=stderr``). Node's
``socket.io-client`` is the one ``tests/js`` installs (``NODE_PATH``); the page loads its browser
bundle from ``node_modules/`` beside it, which the test's own static server maps there too.
Chromium is started with its background networking off: nothing but loopback is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web

from gamegw.server.app import PARTS
from gamegw.server.protocol import codes
from tests.conftest import Gateway, Player, eventually
from tests.integration.test_js_client import JS_DIR, node_client  # noqa: F401  (a fixture)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROOM = "lobby"
LINE_TIMEOUT_S = 15
CONSOLE = re.compile(r':CONSOLE[^\]]*\] "(.*)", source: ')


def split_line(line: str) -> tuple[str, Any]:
    """``"move ack {...}"`` -> ``("move ack", {...})``: the words, then the first JSON that parses."""
    for at in [i for i, c in enumerate(line) if c == " "]:
        with contextlib.suppress(ValueError):
            return line[:at], json.loads(line[at + 1:])
    return line, None


class Example:
    """One example program, running: the ``<what> <json>`` lines it printed, awaited in order."""

    def __init__(self, proc: asyncio.subprocess.Process, stream: asyncio.StreamReader,
                 console: bool = False) -> None:
        self.proc = proc
        self.stream = stream
        self.console = console  # Chromium's stderr: the page's console.log lines, among others
        self.seen: list[str] = []

    @classmethod
    async def start(cls, args: list[str], env: dict[str, str], *, console: bool = False) -> Example:
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL if console else asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if console else asyncio.subprocess.DEVNULL)
        stream = proc.stderr if console else proc.stdout
        assert stream is not None
        return cls(proc, stream, console)

    async def _next(self) -> tuple[str, Any]:
        while True:
            raw = await self.stream.readline()
            if not raw:
                raise AssertionError("the example ended; it printed:\n" + "\n".join(self.seen))
            line = raw.decode(errors="replace").rstrip("\n")
            if self.console:
                found = CONSOLE.search(line)
                if found is None:
                    continue
                line = found.group(1)
            self.seen.append(line)
            return split_line(line)

    async def expect(self, what: str, check: Callable[[Any], bool] = lambda _: True) -> Any:
        """The next ``what`` line whose data passes ``check`` (others are skipped, and kept)."""
        async def find() -> Any:
            while True:
                got, data = await self._next()
                if got == what and check(data):
                    return data

        try:
            return await asyncio.wait_for(find(), LINE_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"no {what!r} line within {LINE_TIMEOUT_S} s; the example printed:\n"
                                 + "\n".join(self.seen)) from None

    async def exit_code(self, timeout: float = 10) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def aclose(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the example, and Chromium's own children
            await self.proc.wait()
        if self.console:  # Chromium's children may still hold the pipe: stop reading it
            self.stream.feed_eof()


def example_env(gateway: Gateway, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    env.update({"GAME_URL": gateway.url, "TOKEN": gateway.token("alice"), "ROOM": ROOM, "MOVES": "4",
                "PYTHONUNBUFFERED": "1", **extra})
    return env


async def play(gateway: Gateway, bob: Player, alice: Example, *, exits: bool = True) -> None:
    """The story in the module docstring, checked from both sides."""
    gw = gateway.app[PARTS].gateway

    async def bob_moves(seq: int) -> None:
        assert await bob.call("move", {"room": ROOM, "action": {"from": "bob"}}) == {"ok": True, "seq": seq}

    # 1. connect, join, move; receive bob's move
    first = await alice.expect("session")
    assert first["user"] == "alice" and first["resumed"] is False
    assert (await alice.expect("joined"))["ok"] is True
    await alice.expect("move", lambda m: (m["seq"], m["user"]) == (1, "alice"))
    assert (await bob.wait_for("player_joined"))[0] == {"room": ROOM, "user": "alice"}
    await bob_moves(2)
    await alice.expect("move", lambda m: (m["seq"], m["user"], m["action"]) == (2, "bob", {"from": "bob"}))

    # 2. a drop: she comes back by herself, resumes, and gets the move she missed replayed
    assert await gw.drop_local("alice") == 1
    await bob.wait_for("player_disconnected")
    await bob_moves(3)  # long before her client's first reconnect (0.5 s at the earliest)
    second = await alice.expect("session")
    assert second["resumed"] is True and second["session_id"] == first["session_id"]
    assert second["rooms"] == [ROOM]
    await alice.expect("move", lambda m: (m["seq"], m["user"]) == (3, "bob"))
    await bob.wait_for("player_reconnected")

    # 3. a server close that says "come back": she reconnects herself, and resumes
    [sid] = gw.local_sids("alice")
    assert await gw.close(sid, codes.SHUTDOWN)
    assert await alice.expect("disconnect_reason") == {"code": 4000, "reason": "shutdown", "reconnect": True}
    third = await alice.expect("session")
    assert third["resumed"] is True and third["session_id"] == first["session_id"]
    await bob.wait_for("player_reconnected", 2)

    # 4. her fourth move seen, she leaves for good
    await bob_moves(4)
    await alice.expect("move", lambda m: m["seq"] == 4)
    await alice.expect("leaving")
    assert (await bob.wait_for("player_left"))[0] == {"room": ROOM, "user": "alice", "reason": "left"}
    assert len(bob.events["player_disconnected"]) == 2  # the drop and the 4000, not the leave

    async def no_session_left() -> bool:
        return await gw.sessions.of_user("alice") == []

    await eventually(no_session_left)
    if exits:
        assert await alice.exit_code() == 0, "\n".join(alice.seen)


@pytest.fixture
async def examples() -> AsyncIterator[Callable[..., Awaitable[Example]]]:
    started: list[Example] = []

    async def start(args: list[str], env: dict[str, str], **kw: Any) -> Example:
        example = await Example.start(args, env, **kw)
        started.append(example)
        return example

    yield start
    for example in started:
        await example.aclose()


async def bob_in_the_room(gateway: Gateway, players: Callable[..., Awaitable[Player]]) -> Player:
    bob = await players(gateway.url, gateway.token("bob"))
    assert (await bob.call("join", {"room": ROOM}))["ok"] is True
    return bob


async def test_the_node_example(gateway: Gateway, players: Callable[..., Awaitable[Player]],
                                examples: Callable[..., Awaitable[Example]], node_client: str) -> None:  # noqa: F811
    bob = await bob_in_the_room(gateway, players)
    env = example_env(gateway, NODE_PATH=str(JS_DIR / "node_modules"))
    alice = await examples([node_client, str(EXAMPLES / "node-client.js")], env)
    await play(gateway, bob, alice)


async def test_the_python_example(gateway: Gateway, players: Callable[..., Awaitable[Player]],
                                  examples: Callable[..., Awaitable[Example]]) -> None:
    bob = await bob_in_the_room(gateway, players)
    alice = await examples([sys.executable, str(EXAMPLES / "python_client.py")], example_env(gateway))
    await play(gateway, bob, alice)


@pytest.fixture
async def examples_site(node_client: str) -> AsyncIterator[str]:  # noqa: F811
    """``examples/`` over HTTP on loopback, with ``node_modules/`` from tests/js (npm installed)."""
    app = web.Application()
    app.router.add_static("/node_modules/", JS_DIR / "node_modules")
    app.router.add_static("/", EXAMPLES)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium not found on PATH: the browser example's test needs headless Chromium "
                "(apt-get install chromium); it does not skip, so that CI cannot go green without it")


async def test_the_browser_example(gateway_factory: Callable[..., Awaitable[Gateway]],
                                   players: Callable[..., Awaitable[Player]],
                                   examples: Callable[..., Awaitable[Example]], examples_site: str,
                                   tmp_path: Path) -> None:
    gateway = await gateway_factory(cors_allowed_origins=examples_site)
    bob = await bob_in_the_room(gateway, players)
    page = f"{examples_site}/browser.html?" + urlencode(
        {"url": gateway.url, "token": gateway.token("alice"), "room": ROOM, "moves": 4})
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
            "--metrics-recording-only", "--no-proxy-server", page]
    alice = await examples(args, dict(os.environ), console=True)
    await play(gateway, bob, alice, exits=False)  # a page does not exit: the fixture closes Chromium
