"""Verifier and mint, on the injected clock: each refusal with its code and reason, the claims a
good token yields, the lifetime cap, and key rotation (a previous key accepted until its end)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gamegw.server.auth import tokens
from gamegw.server.auth.tokens import Claims, Verifier, mint
from gamegw.server.guard.limits import Limit
from gamegw.server.protocol import codes
from gamegw.server.protocol.errors import AuthError, ConfigError
from tests.conftest import TEST_SECRET, make_settings

NOW = 1_900_000_000.0  # the verifier's clock, far from the system's: exp, nbf and iat are judged by it
OLD_SECRET = "previous-secret-0123456789-0123456789-xyz"


def token(payload: dict[str, Any], *, secret: str = TEST_SECRET, alg: str = "HS256",
          headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, secret, algorithm=alg, headers=headers)


def good(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 600, **extra}


def refusal(verifier: Verifier, raw: str) -> tuple[str, str]:
    with pytest.raises(AuthError) as caught:
        verifier.verify(raw)
    return caught.value.refusal.name, caught.value.detail


def verifier(now: float = NOW, **settings: Any) -> Verifier:
    return Verifier(make_settings(**settings), clock=lambda: now)


def test_a_good_token_yields_its_claims() -> None:
    raw = token(good(role="admin", jti="j-1", room="lobby", nbf=int(NOW) - 5, iss="me"))
    assert verifier().verify(raw) == Claims(user_id="alice", exp=NOW + 600, iat=NOW, role="admin", jti="j-1",
                                            extra={"room": "lobby"})
    plain = verifier().verify(token({"sub": "bob", "exp": int(NOW) + 60, "role": 7}))
    assert plain == Claims(user_id="bob", exp=NOW + 60, iat=None, role=None, jti=None, extra={})
    assert plain.is_admin is False and verifier().verify(raw).is_admin is True


def test_missing_oversized_and_malformed_tokens() -> None:
    assert refusal(verifier(), "") == ("token_missing", "no credentials")
    raw = token(good())
    assert verifier(jwt_max_token_bytes=len(raw)).verify(raw).user_id == "alice"
    with pytest.raises(AuthError) as caught:
        verifier(jwt_max_token_bytes=len(raw) - 1).verify(raw)
    assert (caught.value.refusal, caught.value.detail, caught.value.limit) == (
        codes.TOKEN_INVALID, "token too large", Limit.TOKEN_SIZE)
    assert refusal(verifier(), "not.a.token")[0] == "token_invalid"


def test_the_header_is_checked_first() -> None:
    assert refusal(verifier(), token(good(), alg="HS384", secret="k" * 64)) == (
        "token_invalid", "algorithm 'HS384' not allowed")
    assert refusal(verifier(), token(good(), headers={"typ": "JOSE"})) == ("token_invalid", "typ header is not JWT")
    assert verifier().verify(token(good(), headers={"typ": "jwt"})).user_id == "alice"
    # PyJWT itself refuses a crit naming what it does not know; b64 (RFC 7797) it knows, we do not
    b64 = ".".join(base64.urlsafe_b64encode(orjson.dumps(part)).rstrip(b"=").decode() for part in (
        {"alg": "HS256", "typ": "JWT", "crit": ["b64"], "b64": True}, good())) + ".c2ln"
    assert refusal(verifier(), b64) == ("token_invalid", "critical header extensions are not supported")
    assert refusal(verifier(), token(good(), secret="another-secret-0123456789-0123456789")) == (
        "token_invalid", "signature verification failed")


@pytest.mark.parametrize(("sub", "refused"), [
    ("a" * 128, None), ("a" * 129, "sub must be a non-empty string"), ("", "sub must be a non-empty string"),
    (5, "Subject must be a string"),  # PyJWT's own check
])
def test_sub_is_a_short_non_empty_string(sub: Any, refused: str | None) -> None:
    v = verifier()
    raw = token(good(sub=sub)) if not isinstance(sub, int) else token({**good(), "sub": sub})
    if refused is None:
        assert v.verify(raw).user_id == sub
    else:
        assert refusal(v, raw) == ("token_invalid", refused)


def test_exp_and_sub_are_required_and_exp_is_checked_with_the_leeway() -> None:
    assert refusal(verifier(), token({"sub": "alice"}))[0] == "token_invalid"
    assert refusal(verifier(), token({"exp": int(NOW) + 60}))[0] == "token_invalid"
    stale = token({"sub": "alice", "exp": int(NOW) - 5})
    assert refusal(verifier(), stale)[0] == "token_expired"
    assert verifier(jwt_leeway_s=30).verify(stale).user_id == "alice"
    early = token({"sub": "alice", "exp": int(NOW) + 600, "nbf": int(NOW) + 300})
    assert refusal(verifier(), early)[0] == "token_expired"


def test_issuer_and_audience_when_configured() -> None:
    v = verifier(jwt_issuer="games", jwt_audience="gw")
    assert v.verify(token(good(iss="games", aud="gw"))).extra == {}
    assert refusal(v, token(good(iss="games")))[0] == "token_invalid"  # aud required
    assert refusal(v, token(good(aud="gw")))[0] == "token_invalid"  # iss required
    assert refusal(v, token(good(iss="games", aud="other")))[0] == "token_invalid"
    assert refusal(v, token(good(iss="other", aud="gw")))[0] == "token_invalid"
    assert verifier().verify(token(good(aud="anything"))).user_id == "alice"  # not configured: not checked


def test_a_previous_key_is_accepted_until_its_end_and_caps_exp() -> None:
    until = NOW + 100
    rotated = {"jwt_previous_secret": OLD_SECRET, "jwt_previous_key_until": str(until)}
    old = token(good(), secret=OLD_SECRET)
    assert verifier(NOW, **rotated).verify(old).exp == until  # capped at the key's end
    assert verifier(NOW, **rotated).verify(token(good())).exp == NOW + 600  # the main key: not capped
    assert verifier(until - 0.001, **rotated).verify(old).user_id == "alice"
    assert refusal(verifier(until, **rotated), old) == (
        "token_invalid", "signed with the previous key, which is no longer accepted")
    assert refusal(verifier(until, **rotated), token(good(), secret="a-third-secret-0123456789-0123456789")) == (
        "token_invalid", "signature verification failed")


def test_mint_signs_what_verify_accepts() -> None:
    settings = make_settings(jwt_issuer="games", jwt_audience="gw")
    raw = mint(settings, "alice", ttl_s=60, role="admin", claims={"room": "r", "iss": "kept"}, now=NOW)
    untimed = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}  # minted at NOW, years ahead
    payload = jwt.decode(raw, TEST_SECRET, algorithms=["HS256"], audience="gw", options=untimed)
    assert {k: v for k, v in payload.items() if k != "jti"} == {
        "sub": "alice", "iat": int(NOW), "exp": int(NOW) + 60, "role": "admin", "room": "r", "iss": "kept",
        "aud": "gw"}
    assert len(payload["jti"]) == 32
    assert jwt.get_unverified_header(raw) == {"alg": "HS256", "typ": "JWT"}
    bare = jwt.decode(mint(make_settings(), "bob", now=NOW), TEST_SECRET, algorithms=["HS256"], options=untimed)
    assert set(bare) == {"jti", "sub", "iat", "exp"} and bare["exp"] == int(NOW) + 3600


RETIRED = "signed with the previous key, which is no longer accepted"


@pytest.mark.parametrize("claims", [
    {"exp": 1_000_000_000},  # expired, by the verifier's clock and by the system's
    {"nbf": int(NOW) + 10**9},  # not valid yet
    {"iat": int(NOW) + 10**9},  # issued in the future
    {"aud": "elsewhere"},  # an audience, where none is configured
], ids=["expired", "not-yet-valid", "issued-in-the-future", "audience"])
def test_a_retired_keys_token_is_told_apart_whatever_its_claims(claims: dict[str, Any]) -> None:
    """Only the signature says whose token it is: a retired key's token that would fail a claim
    check too is still refused as the previous key's, and a stranger's as a bad signature."""
    until = NOW - 100
    rotated = verifier(NOW, jwt_previous_secret=OLD_SECRET, jwt_previous_key_until=str(until))
    assert refusal(rotated, token(good(**claims), secret=OLD_SECRET)) == ("token_invalid", RETIRED)
    stranger = token(good(**claims), secret="a-third-secret-0123456789-0123456789")
    assert refusal(rotated, stranger) == ("token_invalid", "signature verification failed")


def test_a_key_of_other_algorithms_is_skipped_not_the_end_of_the_search() -> None:
    """The main key (HS256 only) does not take an HS512 token: the previous key (HS512) is tried next."""
    until = NOW + 100
    old_512 = "previous-secret-for-hs512-" + "0123456789" * 4
    rotated = verifier(NOW, jwt_previous_secret=old_512, jwt_previous_algorithms="HS512",
                       jwt_previous_key_until=str(until))
    assert rotated.verify(token(good(), secret=old_512, alg="HS512")).exp == until
    assert rotated.verify(token(good())).exp == NOW + 600


def test_the_main_key_is_tried_first_and_ends_the_search() -> None:
    """A token both keys verify (the previous key is the main key again) is the main key's: not capped."""
    until = NOW + 100
    same = verifier(NOW, jwt_previous_secret=TEST_SECRET, jwt_previous_key_until=str(until))
    assert same.verify(token(good())).exp == NOW + 600


def test_mint_dates_the_token_from_the_clock_without_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_now", lambda: NOW + 0.75)
    raw = mint(make_settings(), "bob", ttl_s=60)
    assert verifier(NOW + 1).verify(raw) == Claims(user_id="bob", exp=NOW + 60, iat=NOW,
                                                   jti=jwt.decode(raw, options={"verify_signature": False})["jti"])


def write_ec_pair(tmp_path: Path) -> tuple[Path, Path]:
    private = ec.generate_private_key(ec.SECP256R1())
    private_file, public_file = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    private_file.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    public_file.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_file, public_file


def test_mint_signs_with_the_private_key_file(tmp_path: Path) -> None:
    private_file, public_file = write_ec_pair(tmp_path)
    settings = make_settings(jwt_algorithms="ES256", jwt_public_key_file=str(public_file),
                             jwt_private_key_file=str(private_file))
    raw = mint(settings, "carol", ttl_s=60, now=NOW)
    assert jwt.get_unverified_header(raw) == {"alg": "ES256", "typ": "JWT"}
    assert verifier(NOW, jwt_algorithms="ES256", jwt_public_key_file=str(public_file)).verify(raw).user_id == "carol"


def test_mint_without_a_usable_private_key_says_which_setting(tmp_path: Path) -> None:
    _, public_file = write_ec_pair(tmp_path)
    public_only = make_settings(jwt_algorithms="ES256", jwt_public_key_file=str(public_file))
    with pytest.raises(ConfigError) as caught:
        mint(public_only, "carol", now=NOW)
    assert str(caught.value) == (
        "jwt_private_key_file: needed to sign ES256 tokens (the server only holds the public key)")
    missing = tmp_path / "missing.pem"
    absent = make_settings(jwt_algorithms="ES256", jwt_public_key_file=str(public_file),
                           jwt_private_key_file=str(missing))
    with pytest.raises(ConfigError) as caught:
        mint(absent, "carol", now=NOW)
    assert str(caught.value) == f"jwt key file {missing}: No such file or directory"
