from tests.conftest import refusal


async def test_connect_join_move(gateway, players):
    p = await players(gateway.url, gateway.token("alice"))
    [session] = await p.wait_for("session")
    assert session["user"] == "alice" and session["resumed"] is False
    ack = await p.call("join", {"room": "r"})
    assert ack == {"ok": True, "room": "r", "seq": 0, "members": ["alice"]}
    assert (await p.call("move", {"room": "r", "action": {"x": 1}}))["seq"] == 1
    [move] = await p.wait_for("move")
    assert move["seq"] == 1


async def test_missing(gateway):
    err = await refusal(gateway.url)
    assert err["message"] == "token_missing"
