"""``gamectl publish ROOM JSON`` against real gateways: a cluster of two, and one in memory."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.cli.run import GAMECTL, gamectl
from tests.conftest import TEST_SECRET
from tests.integration.test_publish import room_on_two_instances


async def test_publish_reaches_the_room_on_both_instances(cluster_factory, players) -> None:
    a_gw, b_gw, alice, bob = await room_on_two_instances(cluster_factory, players, "duel")
    await alice.call("move", {"room": "duel", "action": {"x": 1}})

    code, out, err = await gamectl("publish", "duel", '{"round": "over"}', "--json", "--url", b_gw.url)
    assert code == 0, err
    assert json.loads(out) == {"ok": True, "room": "duel", "seq": 2}
    await bob.call("move", {"room": "duel", "action": {"x": 2}})
    code, out, err = await gamectl("publish", "duel", '{"round": 2}', "--url", a_gw.url,
                                   "--token", a_gw.token("referee", role="admin"))
    assert code == 0, err
    assert out.strip() == "published to duel as seq 4"
    expected = [(1, "alice", {"x": 1}), (2, "gamectl", {"round": "over"}), (3, "bob", {"x": 2}),
                (4, "referee", {"round": 2})]
    for player in (alice, bob):
        await player.wait_for("move", 4)
        assert [(m["seq"], m["user"], m["action"]) for m in player.events["move"]] == expected


async def test_publish_reads_the_action_from_stdin(gateway, players) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    await alice.call("join", {"room": "lobby"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")} | {"GAMEGW_JWT_SECRET": TEST_SECRET}
    proc = await asyncio.create_subprocess_exec(GAMECTL, "publish", "lobby", "-", "--json", "--url", gateway.url,
                                                env=env, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(b'{"motd": "hello"}\n'), 30)
    assert proc.returncode == 0, err
    assert json.loads(out) == {"ok": True, "room": "lobby", "seq": 1}
    [move] = await alice.wait_for("move")
    assert (move["user"], move["action"]) == ("gamectl", {"motd": "hello"})


@pytest.mark.parametrize(("args", "code", "message"), [
    (["lobby", "{not json"], 2, "not JSON"),
    (["lobby", "[1, 2]"], 2, "must be a JSON object"),
    (["lobby"], 2, "Missing argument 'ACTION'"),
    (["nowhere", "{}"], 1, "error: the gateway refused: room_not_found"),
    (["a\nb", "{}"], 1, "error: the gateway refused: bad_request"),
    (["lobby", json.dumps({"x": "y" * 5000})], 1, "error: the gateway refused: payload_too_large"),
])
async def test_publish_refuses_bad_input(gateway, players, args: list[str], code: int, message: str) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    await alice.call("join", {"room": "lobby"})
    got, out, err = await gamectl("publish", *args, "--url", gateway.url)
    assert (got, out) == (code, ""), err
    assert message in err and "Traceback" not in err
    if "room_not_found" in message:
        assert "hint: a room exists while it has members" in err
    assert (await alice.call("move", {"room": "lobby", "action": {}}))["seq"] == 1  # nothing was published


async def test_publish_with_a_players_token_is_forbidden(gateway, players) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    await alice.call("join", {"room": "lobby"})
    code, _, err = await gamectl("publish", "lobby", "{}", "--url", gateway.url, "--token", gateway.token("alice"))
    assert code == 1
    assert "error: the gateway refused: forbidden" in err and "hint: --token must be a JWT with role=admin" in err
    assert not alice.events["move"]
