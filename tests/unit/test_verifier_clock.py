"""The verifier judges exp, nbf and iat by its own clock, the one its lifetime and revocation
checks use: a test moves it by hand instead of waiting for a token to expire."""

from __future__ import annotations

import pytest

from gamegw.server.auth.tokens import Verifier, mint
from gamegw.server.protocol import codes
from gamegw.server.protocol.errors import AuthError
from tests.conftest import make_settings

T0 = 1_900_000_000.0  # years from the system clock, either way it reads


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def refusal(verifier: Verifier, token: str) -> tuple[str, str]:
    with pytest.raises(AuthError) as refused:
        verifier.verify(token)
    return refused.value.refusal.name, refused.value.detail


@pytest.mark.parametrize("leeway_s", [0, 5])
def test_exp_by_the_verifiers_clock(leeway_s: float) -> None:
    settings = make_settings(jwt_leeway_s=leeway_s)
    clock = Clock(T0)
    verifier = Verifier(settings, clock=clock)
    token = mint(settings, "alice", ttl_s=60, now=T0)
    clock.now = T0 + 60 + leeway_s - 0.5
    assert verifier.verify(token).exp == T0 + 60
    clock.now = T0 + 60 + leeway_s
    assert refusal(verifier, token) == (codes.TOKEN_EXPIRED.name, "Signature has expired")


def test_iat_and_nbf_in_the_verifiers_future_are_not_yet_valid() -> None:
    settings = make_settings()
    clock = Clock(T0)
    verifier = Verifier(settings, clock=clock)
    early = mint(settings, "alice", ttl_s=60, now=T0 + 10)
    assert refusal(verifier, early) == (codes.TOKEN_EXPIRED.name, "The token is not yet valid (iat)")
    later = mint(settings, "alice", ttl_s=60, now=T0, claims={"nbf": int(T0 + 10)})
    assert refusal(verifier, later) == (codes.TOKEN_EXPIRED.name, "The token is not yet valid (nbf)")
    clock.now = T0 + 10
    assert verifier.verify(early).iat == T0 + 10 and verifier.verify(later).user_id == "alice"
