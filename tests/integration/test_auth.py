"""The handshake: every refusal of the contract that one instance can give, the accepted key
types and credential sources, and the per-user connection limit.

Real gateways on free ports, real python-socketio clients. Tokens that PyJWT refuses to make
(``alg: none``, HS256 keyed with a public key, no ``typ``) are crafted by hand.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gamegw.server.app import PARTS
from tests.conftest import TEST_SECRET, Gateway, Player, refusal

GatewayFactory = Callable[..., Awaitable[Gateway]]
Players = Callable[..., Awaitable[Player]]

OTHER_SECRET = "another-secret-0123456789-0123456789-xyz"


# -- tokens ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None,
          digest: str = "sha256") -> str:
    """A JWT made by hand: HMAC signed with ``hmac_key`` (SHA-256 unless told), or unsigned."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = hmac.new(hmac_key, signing_input.encode(), digest).digest() if hmac_key else b""
    return f"{signing_input}.{b64url(signature)}"


def claims(user: str = "alice", **changes: Any) -> dict[str, Any]:
    """Valid claims for ``user``; a change to ``None`` removes the claim."""
    now = int(time.time())
    out: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def hs256(payload: dict[str, Any], key: str = TEST_SECRET, **headers: Any) -> str:
    return jwt.encode(payload, key, algorithm="HS256", headers=headers or None)


def write_key_pair(tmp_path: Path, kind: str) -> tuple[bytes, Path]:
    """A fresh private key (PEM) and the path of its public key."""
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    public_file = tmp_path / f"{kind}-{uuid.uuid4().hex}.pub.pem"
    public_file.write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_pem, public_file


# -- assertions --------------------------------------------------------------------------------


async def assert_refused(gw: Gateway, err: dict[str, Any], message: str, code: int) -> None:
    """The contract's refusal shape, and no trace of the connection left in the gateway."""
    assert err["message"] == message, err
    assert set(err["data"]) == {"code", "reason"}, err
    assert err["data"]["code"] == code, err
    assert isinstance(err["data"]["reason"], str) and err["data"]["reason"], err
    parts = gw.app[PARTS]
    assert await parts.registry.list() == []
    assert parts.gateway.conns == {}


async def refused_with(gw: Gateway, token: str, **kw: Any) -> dict[str, Any]:
    return await refusal(gw.url, auth={"token": token}, **kw)


async def poll(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": ["polling", "websocket"]}


async def gateway_for(transport: str, factory: GatewayFactory) -> Gateway:
    """A gateway for clients on ``transport``.

    python-socketio's polling client waits on disconnect for its pending long-poll, which the
    server answers at the next ping at the latest: a short ping interval keeps these tests fast.
    """
    if transport == "websocket":
        return await factory()
    return await factory(ping_interval_s=0.2, ping_timeout_s=0.8)


async def session_of(player: Player) -> dict[str, Any]:
    [session] = await player.wait_for("session")
    return dict(session)


# -- token_missing -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_no_credentials(gateway_factory: GatewayFactory, transport: str) -> None:
    gw = await gateway_for(transport, gateway_factory)
    err = await refusal(gw.url, transports=TRANSPORTS[transport])
    await assert_refused(gw, err, "token_missing", 4401)


@pytest.mark.parametrize("kw", [
    {"auth": {}},
    {"auth": {"token": ""}},
    {"auth": {"last_seq": {"r": 1}}},
    {"headers": {"Authorization": "Bearer "}},
    {"headers": {"Authorization": "Basic YWxpY2U6cHc="}},
    {"query": "?token="},
])
async def test_empty_credentials_are_missing(gateway: Gateway, kw: dict[str, Any]) -> None:
    err = await refusal(gateway.url, **kw)
    await assert_refused(gateway, err, "token_missing", 4401)


# -- token_invalid -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_signature(gateway_factory: GatewayFactory, transport: str) -> None:
    gw = await gateway_for(transport, gateway_factory)
    err = await refused_with(gw, hs256(claims(), key=OTHER_SECRET), transports=TRANSPORTS[transport])
    await assert_refused(gw, err, "token_invalid", 4500)


async def test_tampered_payload(gateway: Gateway) -> None:
    header, _, signature = gateway.token("alice").split(".")
    forged_payload = b64url(json.dumps(claims("mallory")).encode())
    err = await refused_with(gateway, f"{header}.{forged_payload}.{signature}")
    await assert_refused(gateway, err, "token_invalid", 4500)


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none(gateway: Gateway, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, claims())
    assert token.endswith(".")
    err = await refused_with(gateway, token)
    await assert_refused(gateway, err, "token_invalid", 4500)


async def test_algorithm_not_configured(gateway: Gateway) -> None:
    # By hand: PyJWT warns that the test key is short for HS512.
    token = craft({"alg": "HS512", "typ": "JWT"}, claims(), hmac_key=TEST_SECRET.encode(), digest="sha512")
    err = await refused_with(gateway, token)
    await assert_refused(gateway, err, "token_invalid", 4500)


async def test_hs_rs_key_confusion(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    private_pem, public_file = write_key_pair(tmp_path, "rsa")
    gw = await gateway_factory(jwt_algorithms="RS256", jwt_public_key_file=str(public_file))
    # The classic attack: HS256 keyed with the server's public key, which the attacker knows.
    forged = craft({"alg": "HS256", "typ": "JWT"}, claims(), hmac_key=public_file.read_bytes())
    err = await refused_with(gw, forged)
    await assert_refused(gw, err, "token_invalid", 4500)
    # The same gateway takes a token that is really signed with the private key.
    token = jwt.encode(claims(), private_pem, algorithm="RS256")
    assert jwt.decode(token, public_file.read_bytes(), algorithms=["RS256"])["sub"] == "alice"


async def test_rs256_signed_by_another_key(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    _, public_file = write_key_pair(tmp_path, "rsa")
    other_private, _ = write_key_pair(tmp_path, "rsa")
    gw = await gateway_factory(jwt_algorithms="RS256", jwt_public_key_file=str(public_file))
    err = await refused_with(gw, jwt.encode(claims(), other_private, algorithm="RS256"))
    await assert_refused(gw, err, "token_invalid", 4500)


@pytest.fixture
async def iss_aud_gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory(jwt_issuer="gamegw", jwt_audience="players")


async def test_issuer_and_audience_accepted(iss_aud_gateway: Gateway, players: Players) -> None:
    player = await players(iss_aud_gateway.url, hs256(claims(iss="gamegw", aud="players")))
    assert (await session_of(player))["user"] == "alice"
    minted = await players(iss_aud_gateway.url, iss_aud_gateway.token("bob"))
    assert (await session_of(minted))["user"] == "bob"


@pytest.mark.parametrize("changes", [
    {"iss": "someone-else", "aud": "players"},
    {"iss": None, "aud": "players"},
    {"iss": "gamegw", "aud": "spectators"},
    {"iss": "gamegw", "aud": None},
    {"iss": "gamegw", "aud": ["spectators", "admins"]},
], ids=["wrong-iss", "no-iss", "wrong-aud", "no-aud", "aud-list-without-ours"])
async def test_wrong_issuer_or_audience(iss_aud_gateway: Gateway, changes: dict[str, Any]) -> None:
    err = await refused_with(iss_aud_gateway, hs256(claims(**changes)))
    await assert_refused(iss_aud_gateway, err, "token_invalid", 4500)


@pytest.mark.parametrize("typ", ["at+jwt", "JWS", "", 1])
async def test_typ_header_not_jwt(gateway: Gateway, typ: Any) -> None:
    token = craft({"alg": "HS256", "typ": typ}, claims(), hmac_key=TEST_SECRET.encode())
    err = await refused_with(gateway, token)
    await assert_refused(gateway, err, "token_invalid", 4500)


async def test_typ_header_absent_or_jwt_accepted(gateway: Gateway, players: Players) -> None:
    without_typ = craft({"alg": "HS256"}, claims("alice"), hmac_key=TEST_SECRET.encode())
    assert "typ" not in jwt.get_unverified_header(without_typ)
    assert (await session_of(await players(gateway.url, without_typ)))["user"] == "alice"
    with_typ = craft({"alg": "HS256", "typ": "JWT"}, claims("bob"), hmac_key=TEST_SECRET.encode())
    assert (await session_of(await players(gateway.url, with_typ)))["user"] == "bob"


@pytest.mark.parametrize("changes", [{"sub": None}, {"exp": None}, {"sub": ""}, {"sub": 42},
                                     {"sub": None, "exp": None}],
                         ids=["no-sub", "no-exp", "empty-sub", "int-sub", "no-sub-no-exp"])
async def test_missing_or_bad_required_claim(gateway: Gateway, changes: dict[str, Any]) -> None:
    err = await refused_with(gateway, hs256(claims(**changes)))
    await assert_refused(gateway, err, "token_invalid", 4500)


@pytest.mark.parametrize("token", ["abc", "a.b.c", "e30.e30.", "not a token", "....", "eyJhbGciOiJIUzI1NiJ9"])
async def test_malformed(gateway: Gateway, token: str) -> None:
    err = await refused_with(gateway, token)
    await assert_refused(gateway, err, "token_invalid", 4500)


async def test_non_string_token_in_auth(gateway: Gateway) -> None:
    err = await refusal(gateway.url, auth={"token": 12345})
    assert err["message"] in ("token_missing", "token_invalid")
    await assert_refused(gateway, err, err["message"], {"token_missing": 4401, "token_invalid": 4500}[err["message"]])


async def test_oversized_token(gateway: Gateway, players: Players) -> None:
    limit = gateway.settings.jwt_max_token_bytes
    big = hs256(claims(pad="x" * limit))
    assert len(big) > limit
    err = await refused_with(gateway, big)
    await assert_refused(gateway, err, "token_invalid", 4500)
    # A large token within the limit is fine: the refusal above was about the size.
    fits = hs256(claims(pad="x" * (limit // 2)))
    assert len(fits) < limit
    assert (await session_of(await players(gateway.url, fits)))["user"] == "alice"


# -- token_expired -----------------------------------------------------------------------------


@pytest.mark.parametrize("changes", [
    {"exp": int(time.time()) - 60},
    {"exp": int(time.time()) - 86400, "iat": int(time.time()) - 90000},
    {"nbf": int(time.time()) + 600},
], ids=["exp-past", "exp-long-past", "nbf-future"])
async def test_expired_or_not_yet_valid(gateway: Gateway, changes: dict[str, Any]) -> None:
    err = await refused_with(gateway, hs256(claims(**changes)))
    await assert_refused(gateway, err, "token_expired", 4005)


async def test_expiry_leeway(gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(jwt_leeway_s=120)
    within = hs256(claims("alice", exp=int(time.time()) - 30))
    assert (await session_of(await players(gw.url, within)))["user"] == "alice"
    beyond = hs256(claims("bob", exp=int(time.time()) - 600))
    err = await refused_with(gw, beyond)
    assert err["message"] == "token_expired" and err["data"]["code"] == 4005


# -- public-key algorithms ---------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS256"), ("ec", "ES256")])
async def test_public_key_gateway_accepts_a_signed_token(
    gateway_factory: GatewayFactory, players: Players, tmp_path: Path, kind: str, alg: str,
) -> None:
    private_pem, public_file = write_key_pair(tmp_path, kind)
    gw = await gateway_factory(jwt_algorithms=alg, jwt_public_key_file=str(public_file))
    token = jwt.encode(claims("alice", role="player"), private_pem, algorithm=alg)
    assert jwt.get_unverified_header(token)["alg"] == alg
    session = await session_of(await players(gw.url, token))
    assert session["user"] == "alice" and session["resumed"] is False
    # An HS256 token made with the old shared secret is refused there.
    err = await refused_with(gw, hs256(claims("bob")))
    await assert_refused_one_left(gw, err)


async def assert_refused_one_left(gw: Gateway, err: dict[str, Any]) -> None:
    assert err["message"] == "token_invalid" and err["data"]["code"] == 4500
    assert [c.user_id for c in await gw.app[PARTS].registry.list()] == ["alice"]


# -- credential sources ------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("source", ["auth", "header", "query"])
async def test_each_credential_source(
    gateway_factory: GatewayFactory, players: Players, source: str, transport: str,
) -> None:
    gateway = await gateway_for(transport, gateway_factory)
    token = gateway.token("alice")
    kw: dict[str, Any] = {"transports": TRANSPORTS[transport]}
    if source == "auth":
        kw["auth"] = {"token": token}
    elif source == "header":
        kw["headers"] = {"Authorization": f"Bearer {token}"}
    else:
        kw["query"] = f"?token={token}"
    player = await players(gateway.url, **kw)
    session = await session_of(player)
    assert session["user"] == "alice"
    [conn] = await gateway.app[PARTS].registry.list()
    assert conn.user_id == "alice" and conn.sid == session["sid"]


async def test_lowercase_bearer_scheme(gateway: Gateway, players: Players) -> None:
    player = await players(gateway.url, headers={"Authorization": f"bearer {gateway.token('alice')}"})
    assert (await session_of(player))["user"] == "alice"


async def test_auth_payload_wins_over_header(gateway: Gateway, players: Players) -> None:
    good, bad = gateway.token("alice"), hs256(claims("mallory"), key=OTHER_SECRET)
    player = await players(gateway.url, auth={"token": good}, headers={"Authorization": f"Bearer {bad}"})
    assert (await session_of(player))["user"] == "alice"
    await player.disconnect()
    err = await refusal(gateway.url, auth={"token": bad}, headers={"Authorization": f"Bearer {good}"})
    assert err["message"] == "token_invalid" and err["data"]["code"] == 4500


async def test_header_wins_over_query(gateway: Gateway, players: Players) -> None:
    good, bad = gateway.token("alice"), hs256(claims("mallory"), key=OTHER_SECRET)
    player = await players(gateway.url, headers={"Authorization": f"Bearer {good}"}, query=f"?token={bad}")
    assert (await session_of(player))["user"] == "alice"
    await player.disconnect()
    err = await refusal(gateway.url, headers={"Authorization": f"Bearer {bad}"}, query=f"?token={good}")
    assert err["message"] == "token_invalid" and err["data"]["code"] == 4500


async def test_auth_wins_over_query_and_users_come_from_the_winner(gateway: Gateway, players: Players) -> None:
    player = await players(gateway.url, auth={"token": gateway.token("alice")},
                           query=f"?token={gateway.token('bob')}")
    assert (await session_of(player))["user"] == "alice"


async def test_tokens_are_not_logged(gateway: Gateway, players: Players, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = gateway.token("alice")
    bad = hs256(claims("bob"), key=OTHER_SECRET)
    await session_of(await players(gateway.url, good))
    await refused_with(gateway, bad)
    for token in (good, bad):
        for part in token.split("."):
            assert part not in caplog.text


# -- connection limit --------------------------------------------------------------------------


async def test_second_connection_replaces_the_first(gateway: Gateway, players: Players) -> None:
    assert gateway.settings.max_connections_per_user == 1
    assert gateway.settings.on_connection_limit == "replace"
    first = await players(gateway.url, gateway.token("alice"))
    await session_of(first)
    second = await players(gateway.url, gateway.token("alice"))
    new_session = await session_of(second)

    [reason] = await first.wait_for("disconnect_reason")
    assert reason == {"code": 4504, "reason": "session_replaced", "reconnect": False}
    await poll(lambda: not first.client.connected)

    registry = gateway.app[PARTS].registry
    await poll(lambda: len(gateway.app[PARTS].gateway.conns) == 1)
    assert await registry.user_sids("alice") == [new_session["sid"]]
    assert second.client.connected
    assert "disconnect_reason" not in second.events
    assert (await second.call("join", {"room": "r"}))["ok"] is True


async def test_other_users_are_not_replaced(gateway: Gateway, players: Players) -> None:
    alice = await players(gateway.url, gateway.token("alice"))
    bob = await players(gateway.url, gateway.token("bob"))
    await session_of(alice)
    await session_of(bob)
    assert alice.client.connected and bob.client.connected
    assert "disconnect_reason" not in alice.events
    assert sorted(c.user_id for c in await gateway.app[PARTS].registry.list()) == ["alice", "bob"]


async def test_replace_keeps_the_newest_up_to_the_limit(gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(max_connections_per_user=2)
    conns = []
    for _ in range(3):
        player = await players(gw.url, gw.token("alice"))
        conns.append((player, await session_of(player)))
    [reason] = await conns[0][0].wait_for("disconnect_reason")
    assert reason["code"] == 4504 and reason["reason"] == "session_replaced"
    await poll(lambda: not conns[0][0].client.connected)
    assert await gw.app[PARTS].registry.user_sids("alice") == [conns[1][1]["sid"], conns[2][1]["sid"]]
    assert "disconnect_reason" not in conns[1][0].events


async def test_refuse_policy(gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(on_connection_limit="refuse")
    first = await players(gw.url, gw.token("alice"))
    session = await session_of(first)

    err = await refusal(gw.url, auth={"token": gw.token("alice")})
    assert err["message"] == "connection_limit"
    assert err["data"]["code"] == 4504 and isinstance(err["data"]["reason"], str)
    assert set(err["data"]) == {"code", "reason"}

    assert first.client.connected
    assert "disconnect_reason" not in first.events
    assert await gw.app[PARTS].registry.user_sids("alice") == [session["sid"]]
    assert (await first.call("join", {"room": "r"}))["ok"] is True
    # Another user is not limited by alice's connection.
    assert (await session_of(await players(gw.url, gw.token("bob"))))["user"] == "bob"


async def test_refuse_policy_frees_the_seat_on_disconnect(gateway_factory: GatewayFactory, players: Players) -> None:
    gw = await gateway_factory(on_connection_limit="refuse")
    first = await players(gw.url, gw.token("alice"))
    await session_of(first)
    await first.disconnect()
    registry = gw.app[PARTS].registry
    deadline = time.monotonic() + 5
    # the dropped connection's entry stays only as a session in grace, which holds no seat
    while [c for c in await registry.list(user_id="alice") if c.state == "connected"]:
        assert time.monotonic() < deadline, "the registry kept the closed connection"
        await asyncio.sleep(0.01)
    again = await players(gw.url, gw.token("alice"))
    assert (await session_of(again))["user"] == "alice"
