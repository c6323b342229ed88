"""The official JavaScript ``socket.io-client`` resumes a dropped session by itself.

``tests/js/resume.js`` plays bob with ``socket.io-client`` 4.8.1 and its own automatic
reconnection (``reconnection: true``). The only resume code in it is the ``auth`` callback, which
sends ``last_seq = {room: seq of the last move received}`` on every (re)connect, as the contract
asks of a client. The admin API cuts bob's TCP connection with no disconnect packet (a drop);
while he is away alice plays on; the stock client reconnects to the URL it had, gets a
``session`` with ``resumed: true``, then exactly the moves it missed, then the live ones.

The test and the node process talk in JSON lines (config and commands on stdin, what the client
saw on stdout); every assertion is made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from gamegw.server.app import PARTS
from tests.conftest import eventually
from tests.integration.test_js_client import JS_DIR, node_client  # noqa: F401  (the session fixture)
from tests.integration.test_resume import drop

SCRIPT = JS_DIR / "resume.js"
ROOM = "r"
BEFORE, MISSED, LIVE = 3, 4, 3  # alice's moves before the drop, while bob is away, after he is back
BLOCK_S = 0.5  # reconnects are cut for this long after the drop, so the missed moves really are missed
WAIT_S = 10


class NodePlayer:
    """resume.js (or another script of tests/js) in a subprocess of the test's event loop; its
    stdout lines, parsed, in order."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str = SCRIPT.name) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self.arrived = asyncio.Event()
        self.readers = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    @classmethod
    async def start(cls, node: str, config: dict[str, Any], script: Path = SCRIPT) -> NodePlayer:
        proc = await asyncio.create_subprocess_exec(
            node, str(script), cwd=JS_DIR,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        player = cls(proc, script.name)
        await player.send(config)  # the token goes over stdin, never on the command line
        return player

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(json.loads(line))
            self.arrived.set()
        self.arrived.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    def _diagnostics(self) -> str:
        return (f"node exit code: {self.proc.returncode}\nstdout lines: {json.dumps(self.lines)[-4000:]}\n"
                f"stderr: {self.stderr.decode(errors='replace')[-2000:]}")

    async def wait_line(self, key: str, what: str, timeout: float = WAIT_S) -> Any:
        """The value of the first stdout line that has ``key``; fails on an error line or a timeout."""
        async def found() -> Any:
            while True:
                for line in self.lines:
                    if "error" in line:
                        pytest.fail(f"{self.name} failed: {line['error']}\n{self._diagnostics()}")
                    if key in line:
                        return line[key]
                if self.proc.stdout is not None and self.proc.stdout.at_eof():
                    pytest.fail(f"{self.name} ended before {what}\n{self._diagnostics()}")
                self.arrived.clear()
                await self.arrived.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            pytest.fail(f"no {what} from {self.name} within {timeout} s\n{self._diagnostics()}")

    def seqs(self) -> list[int]:
        return [line["seq"] for line in self.lines if line.get("event") == "move"]

    async def wait_moves(self, count: int, timeout: float = WAIT_S) -> None:
        async def enough() -> bool:
            return len(self.seqs()) >= count

        try:
            await eventually(enough, timeout=timeout, interval=0.02)
        except AssertionError:
            pytest.fail(f"bob's JS client got {self.seqs()}, expected {count} moves\n{self._diagnostics()}")

    async def aclose(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.proc.returncode is None:
                self.proc.kill()
        await self.proc.wait()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


async def bob_state(gw: Any) -> list[tuple[str, str]]:
    return [(c.instance_id, c.state) for c in await gw.app[PARTS].registry.list(user_id="bob")]


async def play(alice: Any, count: int, start: int) -> list[int]:
    return [(await alice.call("move", {"room": ROOM, "action": {"i": i}}))["seq"]
            for i in range(start, start + count)]


@pytest.mark.parametrize("topology", ["single", "cluster"])
async def test_stock_js_client_resumes_after_a_drop(topology, gateway_factory, cluster_factory, players,
                                                    node_client):  # noqa: F811
    """Single gateway, or a cluster where bob is on inst-2 and the drop is asked of inst-1."""
    if topology == "single":
        alice_gw = bob_gw = admin_gw = await gateway_factory()
    else:
        alice_gw, bob_gw = await cluster_factory(2)
        admin_gw = alice_gw  # the drop crosses instances: asked of inst-1, carried out by inst-2
    bob_iid = bob_gw.settings.instance_id
    total = BEFORE + MISSED + LIVE

    alice = await players(alice_gw.url, alice_gw.token("alice"))
    assert (await alice.call("join", {"room": ROOM}))["ok"] is True
    bob = await NodePlayer.start(node_client, {"url": bob_gw.url, "token": bob_gw.token("bob"), "room": ROOM,
                                               "timeoutMs": 5000})
    try:
        ready = await bob.wait_line("ready", "ready line (connect, session, join)")
        assert ready["session"]["resumed"] is False and ready["session"]["rooms"] == []
        assert ready["join"]["ok"] is True, ready["join"]
        await alice.wait_for("player_joined")

        # Before the drop: bob sees alice's first moves live.
        assert await play(alice, BEFORE, 0) == list(range(1, BEFORE + 1))
        await bob.wait_moves(BEFORE)

        # The drop: bob's TCP connection is cut with no disconnect packet; reconnects are cut for BLOCK_S.
        outcome = await drop(admin_gw, "bob", block_s=BLOCK_S)
        assert (outcome["count"], outcome["instances"]) == (1, {bob_iid: 1}), outcome
        [disconnected] = await alice.wait_for("player_disconnected", timeout=WAIT_S)
        assert disconnected == {"room": ROOM, "user": "bob", "grace_s": alice_gw.settings.grace_s}

        async def in_grace() -> bool:
            return await bob_state(alice_gw) == [(bob_iid, "grace")]

        await eventually(in_grace, timeout=WAIT_S)

        # While bob is away, alice plays on; bob is still away once she is done.
        missed = await play(alice, MISSED, BEFORE)
        assert missed == list(range(BEFORE + 1, BEFORE + MISSED + 1))
        assert await in_grace(), "bob came back before the missed moves were made (test timing, not the server)"

        # The stock client reconnects by itself, to the URL it had, and resumes.
        resumed = await bob.wait_line("resumed", "second session event (automatic reconnect)")
        assert resumed["resumed"] is True and resumed["rooms"] == [ROOM], resumed
        [reconnected] = await alice.wait_for("player_reconnected", timeout=WAIT_S)
        assert reconnected == {"room": ROOM, "user": "bob"}
        await bob.wait_moves(BEFORE + MISSED)

        # Live play goes on.
        assert await play(alice, LIVE, BEFORE + MISSED) == list(range(BEFORE + MISSED + 1, total + 1))
        await bob.wait_moves(total)
        await alice.wait_for("move", total)
        assert "player_left" not in alice.events, alice.events["player_left"]
        assert alice.events["player_disconnected"] == [disconnected]
        assert alice.events["player_reconnected"] == [reconnected]
        [entry] = await alice_gw.app[PARTS].registry.list(user_id="bob")
        assert (entry.instance_id, entry.state, entry.resumed, entry.sid) == (bob_iid, "connected", True,
                                                                              resumed["sid"])

        await bob.send({"cmd": "finish"})
        report = await bob.wait_line("report", "final report")
    finally:
        await bob.aclose()

    assert report["connected"] is True  # still connected when told to finish

    # Every move exactly once, in order, over the whole run: no gap, no duplicate.
    assert bob.seqs() == list(range(1, total + 1)), bob.seqs()
    assert [m["seq"] for m in report["moves"]] == list(range(1, total + 1))
    assert [m["action"]["i"] for m in report["moves"]] == list(range(total))
    assert all(m["room"] == ROOM for m in report["moves"])

    # Two sessions: a fresh one, then the same session resumed on a new socket.
    first, second = report["sessions"]
    assert first["resumed"] is False and first["rooms"] == []
    assert second["resumed"] is True and second["rooms"] == [ROOM]
    assert second["session_id"] == first["session_id"]
    assert second["sid"] != first["sid"]
    assert second == resumed

    # The client's only resume code: last_seq from the moves it got, sent on every (re)connect
    # (including the attempts cut while reconnects were blocked).
    sent = report["authSent"]
    assert sent[0] == {"last_seq": {}}
    assert len(sent) >= 2 and all(a == {"last_seq": {ROOM: BEFORE}} for a in sent[1:]), sent

    # The drop and the blocked attempts look like a network fault to the client, never like a
    # refusal or a server-side disconnect (which would stop a stock client from reconnecting).
    *cuts, last = [e["reason"] for e in report["events"] if e["event"] == "disconnect"]
    assert cuts and all(r in ("transport close", "transport error") for r in cuts), cuts
    assert last == "io client disconnect"  # the script's own disconnect on "finish"
    assert not [e for e in report["events"] if e["event"] == "connect_error" and e.get("data")], report["events"]
    assert any(e["event"] == "reconnect" for e in report["events"]), report["events"]

    # In order: the fresh session, the moves before the drop, then (after the automatic
    # reconnect) the resumed session FIRST, then the missed moves replayed, then the live ones.
    order = [("session", e["data"]["resumed"]) if e["event"] == "session" else ("move", e["seq"])
             for e in report["events"] if e["event"] in ("session", "move")]
    expected = ([("session", False)] + [("move", s) for s in range(1, BEFORE + 1)] + [("session", True)]
                + [("move", s) for s in range(BEFORE + 1, total + 1)])
    if order != expected:  # (pytrace=False: a short report, and teardown follows at once)
        pytest.fail(f"bob's JS client saw session/move events in this order:\n  {order}\nexpected:\n  {expected}",
                    pytrace=False)
