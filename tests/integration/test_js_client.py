"""The official JavaScript ``socket.io-client`` against a real gateway.

The contract promises that any stock Socket.IO v4 client works unchanged, over websocket and
over long-polling with upgrade. ``tests/js/scenario.js`` plays two players with
``socket.io-client`` 4.8.1 (pinned in ``tests/js/package.json``) and prints one JSON line of
what it saw: acks, received events, transports, refusals. Every assertion is made here.

Node and npm are required, not optional: without them these tests fail rather than skip, so
that CI cannot go green without ever having run a JavaScript client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

JS_DIR = Path(__file__).resolve().parent.parent / "js"
SCRIPT = JS_DIR / "scenario.js"
CLIENT_VERSION = "4.8.1"
STAMP = JS_DIR / "node_modules" / ".gamegw-install-stamp"
NPM_TIMEOUT_S = 300
SCENARIO_TIMEOUT_S = 20
MOVES = 5  # per player

WEBSOCKET = ["websocket"]
UPGRADE = ["polling", "websocket"]
POLLING = ["polling"]
TRANSPORTS = [
    pytest.param(WEBSOCKET, id="websocket"),
    pytest.param(UPGRADE, id="polling+upgrade"),
    pytest.param(POLLING, id="polling-only"),
]


# -- node / npm ---------------------------------------------------------------------------------


def _install_fingerprint(node: str) -> str:
    """What node_modules was installed from: the manifests and the Node version."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = JS_DIR / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"") + b"\0")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True, timeout=30)
    digest.update(version.stdout.strip().encode())
    return digest.hexdigest()


def _installed_client_version() -> str | None:
    manifest = JS_DIR / "node_modules" / "socket.io-client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def node_client() -> str:
    """The ``node`` executable, with tests/js/node_modules installed and up to date.

    ``npm install`` runs at most once per change of package.json / package-lock.json / Node
    version (a stamp file in node_modules records what it was installed from); a file lock keeps
    parallel pytest workers from installing on top of each other.
    """
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if p is None)
        pytest.fail(f"{missing} not found on PATH: the socket.io-client tests need Node.js >= 18 with npm; "
                    "install Node.js (CI must run these tests, so they do not skip)")
    lock_path = Path(tempfile.gettempdir()) / f"gamegw-npm-{hashlib.sha256(bytes(JS_DIR)).hexdigest()[:16]}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fingerprint = _install_fingerprint(node)
            current = STAMP.read_text().strip() if STAMP.exists() else ""
            if current != fingerprint or _installed_client_version() != CLIENT_VERSION:
                env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_loglevel": "error"}
                try:
                    done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS_DIR, env=env,
                                          capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"npm install in {JS_DIR} took more than {NPM_TIMEOUT_S} s")
                if done.returncode != 0:
                    pytest.fail(f"npm install in {JS_DIR} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                installed = _installed_client_version()
                if installed != CLIENT_VERSION:
                    pytest.fail(f"npm installed socket.io-client {installed}, expected {CLIENT_VERSION}")
                # npm may have rewritten package-lock.json: stamp what is there now.
                STAMP.write_text(_install_fingerprint(node) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return node


async def run_scenario(node: str, config: dict[str, Any]) -> dict[str, Any]:
    """Run scenario.js without blocking the event loop the gateway lives in; return its JSON.

    The config (tokens included) goes over stdin, never on the command line.
    """
    proc = await asyncio.create_subprocess_exec(
        node, str(SCRIPT), "-", cwd=JS_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(config).encode()), SCENARIO_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"scenario.js did not finish within {SCENARIO_TIMEOUT_S} s\n"
                    f"stdout: {out.decode()[-2000:]}\nstderr: {err.decode()[-2000:]}")
    lines = out.decode().strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"scenario.js exited {proc.returncode}\nstdout: {out.decode()[-2000:]}\nstderr: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    assert result["error"] is None, f"scenario failed: {result['error']}\npartial result: {lines[-1][:4000]}"
    return result


def foreign_token(user: str) -> str:
    """A well-formed HS256 token signed with a key the gateway does not hold."""
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, "not-the-gateway-key-" * 3,
                      algorithm="HS256", headers={"typ": "JWT"})


def game_config(gateway: Any, transports: list[str], credential: str, room: str) -> dict[str, Any]:
    return {
        "url": gateway.url,
        "transports": transports,
        "credential": credential,
        "users": ["alice", "bob"],
        "tokens": {"alice": gateway.token("alice"), "bob": gateway.token("bob")},
        "room": room,
        "moves": MOVES,
        "badToken": foreign_token("mallory"),
        "expectUpgrade": transports == UPGRADE,
        "timeoutMs": 5000,
    }


# -- what a correct gateway looks like to the JS client -------------------------------------------


def assert_refused(outcome: dict[str, Any], message: str, code: int) -> None:
    assert "accepted" not in outcome, f"the connection was accepted, expected {message}"
    assert outcome["message"] == message
    assert outcome["data"]["code"] == code
    assert isinstance(outcome["data"]["reason"], str) and outcome["data"]["reason"]
    assert set(outcome["data"]) == {"code", "reason"}


def assert_transports(player: dict[str, Any], transports: list[str]) -> None:
    if transports == UPGRADE:
        # Opened over long-polling, then really upgraded to websocket (engine.transport.name).
        assert player["transportAtOpen"] == "polling"
        assert player["upgrades"] == ["websocket"]
        assert player["transportAtEnd"] == "websocket"
    else:
        assert player["transportAtOpen"] == transports[0]
        assert player["upgrades"] == []
        assert player["transportAtEnd"] == transports[0]


def assert_game(result: dict[str, Any], gateway: Any, transports: list[str], room: str) -> None:
    settings = gateway.settings
    a, b = result["players"]["a"], result["players"]["b"]
    n = MOVES
    total = 2 * n + 1  # both players' moves, then one last move from bob

    # Connecting: the first event is `session`, with the contract's fields.
    for player, user in ((a, "alice"), (b, "bob")):
        assert player["connectErrors"] == []
        assert player["firstEvent"] == "session", player["eventNames"]
        session = player["session"]
        assert set(session) == {"sid", "user", "session_id", "resumed", "rooms", "grace_s", "heartbeat"}
        assert session["user"] == user
        assert session["sid"] == player["socketId"]
        assert session["resumed"] is False
        assert session["rooms"] == []
        assert isinstance(session["session_id"], str) and session["session_id"]
        assert session["grace_s"] == settings.grace_s
        assert session["heartbeat"] == {"interval_s": settings.ping_interval_s,
                                        "timeout_s": settings.ping_timeout_s}
        assert player["eventNames"].count("session") == 1
        assert_transports(player, transports)
    assert a["session"]["session_id"] != b["session"]["session_id"]

    # Joining: acks with ok/room/seq/members; the first player hears the second arrive.
    assert result["joinA"] == {"ok": True, "room": room, "seq": 0, "members": ["alice"]}
    join_b = result["joinB"]
    assert {k: v for k, v in join_b.items() if k != "members"} == {"ok": True, "room": room, "seq": 0}
    assert sorted(join_b["members"]) == ["alice", "bob"]
    assert a["playerJoined"] == [{"room": room, "user": "bob"}]

    # Moves: both players get every move, the same events in the same order, seq 1..total with
    # no gap, each player's own moves in the order it sent them.
    moves = a["moves"]
    assert b["moves"] == moves
    assert [m["seq"] for m in moves] == list(range(1, total + 1))
    for m in moves:
        assert set(m) == {"room", "seq", "user", "action", "ts"}
        assert m["room"] == room
        assert m["user"] == m["action"]["by"]
        assert isinstance(m["ts"], int | float)
    assert [m["action"]["i"] for m in moves if m["user"] == "alice"] == list(range(n))
    assert [m["action"]["i"] for m in moves if m["user"] == "bob"] == list(range(n + 1))
    seq_of = {(m["user"], m["action"]["i"]): m["seq"] for m in moves}
    assert result["moveAcksA"] == [{"ok": True, "seq": seq_of["alice", i]} for i in range(n)]
    assert result["moveAcksB"] == [{"ok": True, "seq": seq_of["bob", i]} for i in range(n)]
    assert result["lastMoveAck"] == {"ok": True, "seq": total}  # the rejected payloads took no seq

    # sync and state.
    assert result["syncAll"] == {"ok": True, "events": moves[: 2 * n], "complete": True}
    assert result["syncTail"] == {"ok": True, "events": moves[n: 2 * n], "complete": True}
    for key in ("stateA", "stateAfterBad"):
        state = result[key]
        assert set(state) == {"ok", "seq", "state"}
        assert state["ok"] is True and state["seq"] == 2 * n
        assert isinstance(state["state"], dict)

    # Bad payloads get an error ack and the connection stays up.
    for name, ack in result["bad"].items():
        expected = "not_in_room" if name == "moveNotInRoom" else "bad_request"
        assert ack["ok"] is False, name
        assert ack["error"]["code"] == expected, name
        assert isinstance(ack["error"]["message"], str), name
        assert set(ack) == {"ok", "error"}, name
    assert result["connectedAfterBad"] == {"a": True, "b": True}

    # Leaving.
    assert result["leaveB"] == {"ok": True}
    assert a["playerLeft"] == [{"room": room, "user": "bob", "reason": "left"}]

    # A token signed with another key, presented the same way as the good ones.
    assert_refused(result["refusals"]["bad_token"], "token_invalid", 4500)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_two_players_play_a_game(gateway, node_client, transports):
    """auth: {token}; session first, join, concurrent moves, sync, state, bad payloads, leave,
    a refused bad token; for polling+upgrade, the engine really ends up on websocket."""
    room = "js-" + "-".join(transports)
    result = await run_scenario(node_client, game_config(gateway, transports, "auth", room))
    assert_game(result, gateway, transports, room)


@pytest.mark.parametrize(("credential", "transports"), [
    pytest.param("header", POLLING, id="header-polling-only"),
    pytest.param("header", UPGRADE, id="header-polling+upgrade"),
    pytest.param("query", WEBSOCKET, id="query-websocket"),
    pytest.param("query", POLLING, id="query-polling-only"),
])
async def test_other_credentials(gateway, node_client, credential, transports):
    """The same game with the token in `extraHeaders: {Authorization: "Bearer ..."}` or in
    `query: {token}`; a bad token sent that way is refused with token_invalid / 4500."""
    room = f"js-{credential}"
    result = await run_scenario(node_client, game_config(gateway, transports, credential, room))
    assert result["credential"] == credential
    assert_game(result, gateway, transports, room)


@pytest.mark.parametrize("transports", TRANSPORTS)
async def test_refusals(gateway, node_client, transports):
    """connect_error message and data.code for each refusal, and 'first found wins' between the
    auth payload, the Authorization header and the query string."""
    good = gateway.token("carol")
    bad = foreign_token("carol")
    config = {
        "mode": "refusals",
        "url": gateway.url,
        "transports": transports,
        "timeoutMs": 5000,
        "refusals": [
            {"label": "missing"},
            {"label": "malformed", "auth": {"token": "not-a-jwt"}},
            {"label": "expired", "auth": {"token": gateway.token("carol", ttl_s=-60)}},
            {"label": "auth_bad_header_good", "auth": {"token": bad},
             "extraHeaders": {"Authorization": f"Bearer {good}"}},
            {"label": "header_bad_query_good", "extraHeaders": {"Authorization": f"Bearer {bad}"},
             "query": {"token": good}},
            {"label": "auth_good_query_bad", "auth": {"token": good}, "query": {"token": bad}},
        ],
    }
    refusals = (await run_scenario(node_client, config))["refusals"]
    assert_refused(refusals["missing"], "token_missing", 4401)
    assert_refused(refusals["malformed"], "token_invalid", 4500)
    assert_refused(refusals["expired"], "token_expired", 4005)
    assert_refused(refusals["auth_bad_header_good"], "token_invalid", 4500)
    assert_refused(refusals["header_bad_query_good"], "token_invalid", 4500)
    assert refusals["auth_good_query_bad"].get("accepted") is True, refusals["auth_good_query_bad"]
