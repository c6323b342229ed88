"""The real ``gamectl`` console script, run as a subprocess in an isolated environment.

Every run gets ``XDG_STATE_HOME`` and ``HOME`` under ``tmp_path`` and no ``GAMEGW_*`` variable
from the outer environment, so the development profile's key lives (and is generated) there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio

GAMECTL = Path(sys.executable).with_name("gamectl")
HMAC = ["HS256"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    clean.update({"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home"),
                  "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    return clean


def dev_key(env: dict[str, str]) -> str:
    return (Path(env["XDG_STATE_HOME"]) / "gamegw" / "dev-jwt-secret").read_text().strip()


def gamectl(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(GAMECTL), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1, an ``error:`` line naming the problem (and at most a hint), no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(not line.startswith("error:") and line.startswith("hint:") for line in lines[1:]), result.stderr
    assert len(lines) <= 2, result.stderr
    for word in words:
        assert word in errors[0], result.stderr
    return errors[0]


def test_gamectl_is_installed() -> None:
    assert GAMECTL.is_file() and os.access(GAMECTL, os.X_OK)


def test_help(env: dict[str, str]) -> None:
    result = gamectl(env, "--help")
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "token" in result.stdout
    for command in ("serve", "token"):
        sub = gamectl(env, command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage" in sub.stdout


def test_no_arguments_is_usage(env: dict[str, str]) -> None:
    result = gamectl(env)
    assert result.returncode in (0, 2)  # typer's no_args_is_help prints help
    assert "serve" in result.stdout + result.stderr


def test_unknown_command_is_usage(env: dict[str, str]) -> None:
    assert gamectl(env, "frobnicate").returncode == 2


def test_token_verifies_with_the_dev_key(env: dict[str, str]) -> None:
    result = gamectl(env, "token", "alice")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and token.count(".") == 2
    claims = jwt.decode(token, dev_key(env), algorithms=HMAC)
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(token)["typ"] == "JWT"
    key_file = Path(env["XDG_STATE_HOME"]) / "gamegw" / "dev-jwt-secret"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (Path(env["HOME"]) / ".local").exists()


def test_token_reuses_the_dev_key(env: dict[str, str]) -> None:
    first = gamectl(env, "token", "alice").stdout.strip()
    key = dev_key(env)
    second = gamectl(env, "token", "bob").stdout.strip()
    assert dev_key(env) == key
    assert jwt.decode(first, key, algorithms=HMAC)["sub"] == "alice"
    assert jwt.decode(second, key, algorithms=HMAC)["sub"] == "bob"


def test_token_options_become_claims(env: dict[str, str]) -> None:
    result = gamectl(env, "token", "alice", "--ttl", "15m", "--role", "admin", "--claim", "team=red",
                     "--claim", "level=a=b")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), dev_key(env), algorithms=HMAC)
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 15 * 60
    assert claims["role"] == "admin"
    assert claims["team"] == "red"
    assert claims["level"] == "a=b"


@pytest.mark.parametrize(("ttl", "seconds"), [("90s", 90), ("90", 90), ("1h", 3600), ("7d", 7 * 86400)])
def test_token_ttl_units(env: dict[str, str], ttl: str, seconds: int) -> None:
    result = gamectl(env, "token", "alice", "--ttl", ttl)
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), dev_key(env), algorithms=HMAC)
    assert claims["exp"] - claims["iat"] == seconds


def test_token_longer_than_the_gateway_accepts_warns(env: dict[str, str]) -> None:
    result = gamectl(env, "token", "alice", "--ttl", "2d")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("warning: the gateway refuses tokens that live longer than jwt_max_lifetime_s "
                             "(86400 s)\n")
    claims = jwt.decode(result.stdout.strip(), dev_key(env), algorithms=HMAC)
    assert claims["exp"] - claims["iat"] == 2 * 86400
    assert gamectl(env, "token", "alice", "--ttl", "1d").stderr == ""


def test_token_json(env: dict[str, str]) -> None:
    result = gamectl(env, "token", "alice", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"token", "sub", "exp"}
    assert data["sub"] == "alice"
    claims = jwt.decode(data["token"], dev_key(env), algorithms=HMAC)
    assert claims["sub"] == "alice" and claims["exp"] == data["exp"]
    assert isinstance(data["exp"], int)


def test_token_with_a_configured_secret(env: dict[str, str]) -> None:
    secret = "cli-secret-0123456789-0123456789-abcdef"
    result = gamectl({**env, "GAMEGW_JWT_SECRET": secret, "GAMEGW_JWT_ISSUER": "gamegw"}, "token", "bob")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=HMAC, issuer="gamegw")
    assert claims["sub"] == "bob"
    assert not (Path(env["XDG_STATE_HOME"]) / "gamegw" / "dev-jwt-secret").exists()


@pytest.mark.parametrize("args", [
    ["--ttl", "soon"], ["--ttl", "0"], ["--ttl", "-5m"], ["--ttl", "1y"],
    ["--claim", "novalue"], ["--claim", "=red"],
], ids=["ttl-word", "ttl-zero", "ttl-negative", "ttl-unit", "claim-no-equals", "claim-no-key"])
def test_token_bad_usage_exits_2(env: dict[str, str], args: list[str]) -> None:
    result = gamectl(env, "token", "alice", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == ""


def test_token_without_user_exits_2(env: dict[str, str]) -> None:
    assert gamectl(env, "token").returncode == 2


def test_serve_with_a_short_secret_exits_1(env: dict[str, str]) -> None:
    result = gamectl({**env, "GAMEGW_JWT_SECRET": "too-short"}, "serve", "--port", "0", timeout=20)
    assert_one_line_error(result, "jwt_secret")


def test_serve_with_a_missing_config_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = gamectl(env, "serve", "--config", str(missing), timeout=20)
    assert_one_line_error(result, "missing.toml")


def test_serve_with_a_bad_config_value_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('jwt_secret = "cli-secret-0123456789-0123456789-abcdef"\non_connection_limit = "kick"\n')
    result = gamectl(env, "serve", "--config", str(config), timeout=20)
    assert_one_line_error(result, "on_connection_limit")


def test_serve_with_star_origins_outside_dev_exits_1(env: dict[str, str]) -> None:
    result = gamectl({**env, "GAMEGW_JWT_SECRET": "cli-secret-0123456789-0123456789-abcdef",
                      "GAMEGW_CORS_ALLOWED_ORIGINS": "*"}, "serve", timeout=20)
    assert_one_line_error(result, "cors_allowed_origins")


def test_token_with_a_short_secret_exits_1(env: dict[str, str]) -> None:
    result = gamectl({**env, "GAMEGW_JWT_SECRET": "too-short"}, "token", "alice")
    assert_one_line_error(result, "jwt_secret")
    assert result.stdout.strip() == ""


def test_serve_bad_port_is_usage(env: dict[str, str]) -> None:
    assert gamectl(env, "serve", "--port", "http").returncode == 2


# -- a real server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"gamectl serve exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise AssertionError("gamectl serve did not answer /healthz in time") from None
            time.sleep(0.05)


@pytest.fixture
def server(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``gamectl serve --port P`` in the development profile, stderr kept in a file."""
    port = free_port()
    stderr_path = tmp_path / "serve.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen([str(GAMECTL), "serve", "--port", str(port)], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        yield f"http://127.0.0.1:{port}", proc, stderr_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_serve_dev_profile_end_to_end(
    env: dict[str, str], server: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    url, proc, stderr_path = server
    assert wait_healthy(url, proc)["status"] == "ok"
    # The server made the development key; `gamectl token` signs with the same one.
    minted = gamectl(env, "token", "alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert jwt.decode(token, dev_key(env), algorithms=HMAC)["sub"] == "alice"

    received: dict[str, list[Any]] = {}
    arrived = threading.Condition()

    def record(event: str, data: Any = None) -> None:
        with arrived:
            received.setdefault(event, []).append(data)
            arrived.notify_all()

    def wait_for(event: str, timeout: float = 10) -> Any:
        with arrived:
            assert arrived.wait_for(lambda: event in received, timeout), f"no {event} event; got {received}"
            return received[event][0]

    client = socketio.Client(reconnection=False)
    client.on("*", record, namespace="/game")
    try:
        client.connect(url, namespaces=["/game"], auth={"token": token}, transports=["websocket"],
                       wait_timeout=10)
        session = wait_for("session")
        assert session["user"] == "alice" and session["resumed"] is False
        assert client.call("join", {"room": "lobby"}, namespace="/game", timeout=10)["ok"] is True

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
        assert time.monotonic() - started < 8
        assert wait_for("disconnect_reason", timeout=5) == {"code": 4000, "reason": "shutdown", "reconnect": True}
    finally:
        if client.connected:
            client.disconnect()
        client.shutdown()

    stderr = stderr_path.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "Error" not in stderr.replace("error=", ""), stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["token"], ["connections"], ["connections", "ls"], ["instances"],
                                     ["kick"], ["simulate-drop"], ["revoke"], ["publish"], ["loadtest"],
                                     ["dashboard"]])
def test_help_shows_flags_bare_and_arguments_in_capitals(env: dict[str, str], command: list[str]) -> None:
    result = gamectl(env, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout and "{" not in result.stdout.split("Usage:")[1].splitlines()[0]
    flags = [line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("│ --help")]
    assert flags == [["--help", "Show"]]


@pytest.mark.parametrize(("command", "usage"), [(["kick"], "gamectl kick [OPTIONS] USER"),
                                                (["token"], "gamectl token [OPTIONS] USER"),
                                                (["revoke"], "gamectl revoke [OPTIONS] USER"),
                                                (["connections"], "gamectl connections [OPTIONS] COMMAND [ARGS]...")])
def test_usage_lines_name_arguments_in_capitals(env: dict[str, str], command: list[str], usage: str) -> None:
    result = gamectl(env, *command, "--help")
    assert f"Usage: {usage}" in result.stdout, result.stdout
    json_lines = [line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("│ --json")]
    assert json_lines in ([], [["--json", "Print"]]), json_lines
    if command != ["connections"]:
        missing = gamectl(env, *command)
        assert missing.returncode == 2 and "Missing argument 'USER'" in missing.stderr, missing.stderr
