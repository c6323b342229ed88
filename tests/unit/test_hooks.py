"""Hook settings (each bad value a one-line ``ConfigError`` naming it), the breaker's states on a
fake clock, and the verdict a hook's refusal turns into."""

from __future__ import annotations

from pathlib import Path

import pytest

from gamegw.server.config import Settings, load_settings
from gamegw.server.hooks.breaker import Breaker, State
from gamegw.server.hooks.client import veto
from gamegw.server.protocol.errors import ConfigError

SECRET = "s" * 40


def settings(**env: str) -> Settings:
    return load_settings({"GAMEGW_JWT_SECRET": SECRET, **{f"GAMEGW_{k.upper()}": v for k, v in env.items()}})


def test_hook_settings_from_the_environment() -> None:
    s = settings(hooks_url="http://127.0.0.1:9000/gamegw", hooks_events="join, move", hooks_timeout_s="0.5",
                 hooks_on_error="allow", hooks_breaker_failures="3", hooks_breaker_cooldown_s="2")
    assert (s.hooks_url, s.hooks_events, s.hooks_timeout_s, s.hooks_on_error) == (
        "http://127.0.0.1:9000/gamegw", ("join", "move"), 0.5, "allow")
    assert (s.hooks_breaker_failures, s.hooks_breaker_cooldown_s) == (3, 2.0)
    off = settings()
    assert (off.hooks_url, off.hooks_events, off.hooks_on_error) == ("", (), "deny")


def test_hook_settings_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "gamegw.toml"
    path.write_text('hooks_url = "https://backend.example/gamegw"\nhooks_events = ["connect", "leave"]\n'
                    'hooks_on_error = "allow"\n')
    s = load_settings({"GAMEGW_JWT_SECRET": SECRET}, path)
    assert (s.hooks_url, s.hooks_events, s.hooks_on_error) == ("https://backend.example/gamegw",
                                                              ("connect", "leave"), "allow")


@pytest.mark.parametrize(("env", "names"), [
    ({"hooks_url": "ftp://example.com/x", "hooks_events": "move"}, "hooks_url"),
    ({"hooks_url": "http://:99999/x", "hooks_events": "move"}, "hooks_url"),
    ({"hooks_url": "http://127.0.0.1:9000/x"}, "hooks_events: empty"),
    ({"hooks_url": "http://127.0.0.1:9000/x", "hooks_events": "move,chat"}, "hooks_events: unknown event 'chat'"),
    ({"hooks_events": "move"}, "hooks_events: set, but hooks_url is not"),
    ({"hooks_on_error": "maybe"}, "hooks_on_error: 'maybe' must be 'allow' or 'deny'"),
    ({"hooks_timeout_s": "0"}, "hooks_timeout_s"),
    ({"hooks_breaker_cooldown_s": "-1"}, "hooks_breaker_cooldown_s"),
    ({"hooks_breaker_failures": "0"}, "hooks_breaker_failures: must be at least 1"),
])
def test_bad_hook_settings_stop_startup(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as exc:
        settings(**env)
    assert str(exc.value).startswith(names), str(exc.value)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_n_failures_in_a_row_and_probes_once_after_the_cooldown() -> None:
    clock, changes = Clock(), []
    breaker = Breaker(3, 10.0, clock=clock, on_change=lambda state, n: changes.append((state, n)))
    for _ in range(2):
        assert breaker.admit() == (True, False)
        breaker.failure()
    breaker.success()  # a success in between: the count starts again
    for _ in range(3):
        assert breaker.admit() == (True, False)
        breaker.failure()
    assert breaker.state is State.OPEN and changes == [(State.OPEN, 3)]
    clock.now += 9.9
    assert breaker.admit() == (False, False)
    clock.now += 0.1
    assert breaker.admit() == (True, True)  # the probe
    assert breaker.admit() == (False, False)  # the others wait for it
    breaker.failure()
    assert breaker.state is State.OPEN and changes == [(State.OPEN, 3)]  # still open: no second "opened"
    assert breaker.admit() == (False, False)
    clock.now += 10
    assert breaker.admit() == (True, True)
    breaker.abandon()  # the probe was cancelled: the next caller probes at once
    assert breaker.admit() == (True, True)
    breaker.success()
    assert breaker.state is State.CLOSED and changes[-1] == (State.CLOSED, 0)
    assert breaker.admit() == (True, False)


def test_a_veto_keeps_a_valid_code_and_replaces_anything_else() -> None:
    assert veto({"ok": False, "code": "shop.no_credits", "message": "m"}).code == "shop.no_credits"
    for bad in (None, 7, "", "Upper", "has space", "trailing.", "x" * 65):
        assert veto({"ok": False, "code": bad}).code == "hook_refused"
    assert veto({"ok": False, "message": "m" * 1000}).message == "m" * 256
