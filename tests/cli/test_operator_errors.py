"""Operator mistakes end in one ``error:`` line and a ``hint:`` naming the fix, exit 1 (issue 15).

The real ``gamectl`` runs as a subprocess with no ``GAMEGW_*`` variable from the outer
environment. ``serve`` runs with JSON logs, so that the test reads which lifecycle events it
logged (never ``ready`` when it cannot serve) from payloads rather than from text.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from tests.cli.run import GAMECTL
from tests.conftest import TEST_SECRET, RedisServer, free_port


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh terminal: no GAMEGW_ variable, a state directory (for the dev key) of the test's own."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    clean.update({"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home"),
                  "NO_COLOR": "1", "COLUMNS": "200"})
    return clean


@pytest.fixture
def prod(env: dict[str, str]) -> dict[str, str]:
    """The production profile with the test key and JSON logs."""
    return {**env, "GAMEGW_JWT_SECRET": TEST_SECRET, "GAMEGW_LOG_FORMAT": "json"}


def run(env: dict[str, str], *args: str, timeout: float = 30, without: str = "") -> subprocess.CompletedProcess[str]:
    """``gamectl ARGS``; ``without`` names capabilities to drop (comma-separated), so that root
    can stand for an operator who lacks them."""
    prefix = unprivileged(without) if without else []
    return subprocess.run([*prefix, str(GAMECTL), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def unprivileged(capabilities: str) -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv (util-linux) to drop a capability")
    return [setpriv, "--bounding-set", ",".join(f"-{c}" for c in capabilities.split(","))]


async def arun(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``run`` for async tests, whose event loop serves an in-process gateway meanwhile."""
    proc = await asyncio.create_subprocess_exec(str(GAMECTL), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


def failed(result: subprocess.CompletedProcess[str], *in_error: str, hint: tuple[str, ...] = ()) -> str:
    """Exit 1, no traceback, exactly one ``error:`` line and its ``hint:`` as the last two lines;
    any line before them is a JSON log line, and none of those says ``ready``. Returns the error."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 2 and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), result.stderr
    events = [json.loads(line)["event"] for line in lines[:-2]]  # raises on any other line
    assert "ready" not in events and "start" not in events, events
    for word in in_error:
        assert word in lines[-2], result.stderr
    for word in hint:
        assert word in lines[-1], result.stderr
    return lines[-2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


# -- serve: listeners ---------------------------------------------------------------------------


def test_serve_on_a_taken_port_says_so_and_never_ready(prod: dict[str, str], taken_port: int) -> None:
    result = run(prod, "serve", "--port", str(taken_port))
    failed(result, f"port {taken_port} on 127.0.0.1 is in use", hint=("--port",))


def test_serve_with_a_taken_admin_port_says_so_and_never_ready(prod: dict[str, str], taken_port: int) -> None:
    result = run(prod, "serve", "--port", "0", "--admin-port", str(taken_port))
    failed(result, f"port {taken_port} on 127.0.0.1 is in use", hint=("--admin-port",))


def test_ready_gives_the_bound_port_and_answers(prod: dict[str, str], tmp_path: Path) -> None:
    """``ready`` comes once the listener is bound: its URL (port 0 resolved) answers at once."""
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([str(GAMECTL), "serve", "--port", "0"], env=prod, stdout=subprocess.DEVNULL,
                                stderr=log_file)
    try:
        deadline = time.monotonic() + 20
        ready: dict[str, Any] | None = None
        while ready is None:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            for line in log_path.read_text().splitlines():
                if json.loads(line)["event"] == "ready":
                    ready = json.loads(line)
            time.sleep(0.05)
        host, port = ready["url"].removeprefix("http://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_on_an_address_not_of_this_machine(prod: dict[str, str]) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): documentation only, never a machine's address
    failed(run(prod, "serve", "--host", "192.0.2.1", "--port", "0"), "192.0.2.1", "not an address of this machine",
           hint=("--host", "127.0.0.1"))


def test_serve_on_a_host_that_is_not_a_name(prod: dict[str, str]) -> None:
    # an empty label fails before any lookup: no query leaves the machine
    failed(run(prod, "serve", "--host", "a..b", "--port", "0"), "a..b", "does not resolve", hint=("--host",))


def privileged_port() -> int:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 1:
        pytest.skip("every port is unprivileged on this machine")
    return start - 1


def test_serve_on_a_privileged_port_without_privileges(prod: dict[str, str], tmp_path: Path) -> None:
    port = privileged_port()
    result = run(prod, "serve", "--port", str(port), without="net_bind_service")
    failed(result, f"port {port}", "needs privileges", hint=("1024",))


# -- serve: Redis ------------------------------------------------------------------------------


def test_serve_with_no_redis_at_the_url_fails_fast(prod: dict[str, str]) -> None:
    url = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    result = run(prod, "serve", "--port", "0", "--redis", url)
    error = failed(result, "cannot reach Redis", f"127.0.0.1:{url.rsplit(':', 1)[1]}",
                   hint=("--redis", "GAMEGW_REDIS_URL"))
    assert time.monotonic() - started < 6  # one refused connect, not ten seconds of retries
    assert "hunter2" not in result.stderr, error


def test_serve_with_a_wrong_redis_password(prod: dict[str, str], redis_server: RedisServer) -> None:
    url = f"redis://ghost:wrong@127.0.0.1:{redis_server.port}/0"
    failed(run(prod, "serve", "--port", "0", "--redis", url), "refused the credentials",
           hint=("user and password", "GAMEGW_REDIS_URL"))


def test_serve_with_a_redis_database_out_of_range(prod: dict[str, str], redis_server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    failed(run(prod, "serve", "--port", "0", "--redis", url), "DB index is out of range",
           hint=("database number",))


@pytest.fixture
def ping_only_user(redis_server: RedisServer) -> Iterator[str]:
    """A Redis user that may PING and nothing else: Redis answers, then refuses the subscription."""
    name = "t" + uuid.uuid4().hex[:10]
    client = redis_sync.Redis(port=redis_server.port)
    try:
        client.acl_setuser(name, enabled=True, passwords=["+pw"], commands=["+ping"])
        yield f"redis://{name}:pw@127.0.0.1:{redis_server.port}/0"
        client.acl_deluser(name)
    finally:
        client.close()


def test_serve_with_a_redis_user_that_may_not_subscribe_fails_fast(prod: dict[str, str],
                                                                    ping_only_user: str) -> None:
    started = time.monotonic()
    failed(run(prod, "serve", "--port", "0", "--redis", ping_only_user), "NOPERM", hint=("ACL",))
    assert time.monotonic() - started < 6


def test_serve_with_a_password_that_redis_does_not_need(prod: dict[str, str], redis_server: RedisServer,
                                                         tmp_path: Path) -> None:
    """redis-py accepts a password for a Redis without one; the pub/sub listener must too."""
    url = f"redis://:unneeded@127.0.0.1:{redis_server.port}/0"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen([str(GAMECTL), "serve", "--port", "0", "--redis", url],
                                env={**prod, "GAMEGW_REDIS_PREFIX": "t" + uuid.uuid4().hex[:10]},
                                stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        deadline = time.monotonic() + 8
        while '"event":"ready"' not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait(10)


# -- Redis URLs --------------------------------------------------------------------------------

BAD_URLS = ["notaurl", "http://127.0.0.1:6379", "redis://127.0.0.1:99999/0", "redis://127.0.0.1:6379/zero"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_connections_ls_with_a_bad_redis_url(env: dict[str, str], url: str) -> None:
    failed(run(env, "connections", "ls", "--redis", url), "--redis",
           hint=("redis://[user:password@]host:port/db", "unix://"))


@pytest.mark.parametrize("url", BAD_URLS)
def test_serve_with_a_bad_redis_url(prod: dict[str, str], url: str) -> None:
    failed(run(prod, "serve", "--redis", url), "redis_url", hint=("redis://", "unix://"))


@pytest.mark.parametrize("command", [["kick", "bob"], ["revoke", "bob"], ["simulate-drop", "bob"],
                                     ["publish", "lobby", "{}"]])
def test_ops_with_a_bad_redis_url_variable(prod: dict[str, str], command: list[str]) -> None:
    failed(run({**prod, "GAMEGW_REDIS_URL": "notaurl"}, *command), "redis_url", hint=("redis://",))


def test_connections_ls_with_no_redis_at_the_url(env: dict[str, str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    failed(run(env, "connections", "ls", "--redis", url), "cannot reach Redis", url, hint=("--redis",))


@pytest.mark.parametrize("command", [["serve"], ["connections", "ls"]], ids=["serve", "connections-ls"])
def test_no_sentinel_answers(prod: dict[str, str], command: list[str]) -> None:
    """A Sentinel URL whose sentinels are all down: one line naming each, not redis-py's reprs."""
    ports = [free_port(), free_port()]
    url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/0/main"
    error = failed(run(prod, *command, "--redis", url), f"no master for Redis at {url}: no sentinel named a master "
                   f"for 'main' (127.0.0.1:{ports[0]}: ", hint=("start the sentinels", "service name", "--redis"))
    assert f"; 127.0.0.1:{ports[1]}: " in error and "Connection(" not in error


def test_connections_ls_with_a_wrong_redis_password(env: dict[str, str], redis_server: RedisServer) -> None:
    url = f"redis://ghost:secret-pw@127.0.0.1:{redis_server.port}/0"
    result = run(env, "connections", "ls", "--redis", url)
    failed(result, "refused the credentials", hint=("--redis", "user and password"))
    assert "secret-pw" not in result.stderr


# -- ops commands against the admin API --------------------------------------------------------

OPS = [["connections", "ls"], ["kick", "bob"], ["revoke", "bob"], ["simulate-drop", "bob"], ["publish", "lobby", "{}"]]


@pytest.mark.parametrize("command", OPS, ids=lambda c: c[0])
async def test_ops_from_a_fresh_terminal_names_the_key_variable(env: dict[str, str], gateway_factory: Any,
                                                                command: list[str]) -> None:
    """The gateway runs with GAMEGW_JWT_SECRET; this terminal has no key and signs with the dev key."""
    gw = await gateway_factory()
    result = await arun(env, *command, "--url", gw.url)
    failed(result, "signature verification failed", hint=("GAMEGW_JWT_SECRET", "--config"))


async def test_ops_with_a_token_that_is_not_admin(env: dict[str, str], gateway_factory: Any) -> None:
    gw = await gateway_factory()
    result = await arun(env, "kick", "bob", "--url", gw.url, "--token", gw.token("bob"))
    failed(result, "forbidden", hint=("role=admin",))


@pytest.mark.parametrize("command", OPS, ids=lambda c: c[0])
def test_ops_with_no_gateway_at_the_url(env: dict[str, str], command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    failed(run(env, *command, "--url", url), "cannot reach the gateway", url, hint=("--url",))


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "words"), [
    (b"port = \n", ("not valid TOML",)),
    (b"\xff\xfeport = 1\n", ("not text",)),
    (b"bogus = 1\n", ("unknown setting 'bogus'",)),
    (b'port = "eighty"\n', ("port",)),
], ids=["bad-toml", "not-utf8", "unknown-key", "bad-type"])
def test_serve_with_a_bad_config_file(prod: dict[str, str], tmp_path: Path, content: bytes,
                                      words: tuple[str, ...]) -> None:
    path = tmp_path / "gamegw.toml"
    path.write_bytes(content)
    failed(run(prod, "serve", "--config", str(path)), str(path), *words)


def test_serve_with_a_directory_as_config(prod: dict[str, str], tmp_path: Path) -> None:
    failed(run(prod, "serve", "--config", str(tmp_path)), "is a directory", hint=("TOML file",))


def test_serve_with_an_unreadable_config(prod: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "gamegw.toml"
    path.write_text("port = 8000\n")
    path.chmod(0o000)
    result = run(prod, "serve", "--config", str(path), without="dac_override,dac_read_search")
    failed(result, "permission denied", hint=("chmod",))


@pytest.mark.parametrize(("variable", "value", "hint"), [
    ("GAMEGW_PORT", "eighty", "whole number"),
    ("GAMEGW_GRACE_S", "soon", "a number"),
    ("GAMEGW_WEBSOCKET_ONLY", "maybe", "true or false"),
])
def test_serve_with_a_bad_variable(prod: dict[str, str], variable: str, value: str, hint: str) -> None:
    failed(run({**prod, variable: value}, "serve"), variable, repr(value), hint=(hint,))


def test_one_variable_without_the_key_names_the_profile(env: dict[str, str]) -> None:
    """Any GAMEGW_ variable ends the development profile: the hint says so, and how to keep it."""
    failed(run({**env, "GAMEGW_LOG_LEVEL": "debug"}, "serve"), "jwt_secret",
           hint=("GAMEGW_JWT_SECRET", "GAMEGW_PROFILE=dev"))


def test_revoke_with_a_bad_exp_is_usage(env: dict[str, str]) -> None:
    result = run(env, "revoke", "bob", "--jti", "j1", "--exp", "tomorrow")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "ISO-8601" in result.stderr and "--exp: --exp" not in " ".join(result.stderr.split())


def test_ops_with_a_bad_config_file(env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "gamegw.toml"
    path.write_text("port = \n")
    failed(run(env, "kick", "bob", "--config", str(path)), str(path), "not valid TOML", hint=("key = value",))
