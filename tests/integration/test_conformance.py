"""The Socket.IO maintainers' Engine.IO and Socket.IO conformance suites against a real gateway.

``../shared/conformance/run`` (beside the repository) runs the suites, unchanged, with Node's
mocha; their Node modules are installed by the script into ``CONFORMANCE_CACHE`` (default here:
``~/.cache/gamegw-conformance``). The gateway is started at the suites' settings (ping 300/200
ms, maxPayload 1e6). Each run must give the exact figure and the exact set of failing tests, so
that a regression of any applicable test fails the build, and so does a test that starts to pass
(the expectations below are then out of date). Every failure left is explained where it is
listed, and in docs/protocol.md ("Conformance").

A stock python-socketio server (the suites' reference app, ``tests/stock_socketio.py``) runs
the same suites for comparison, once as it is and once on ``server/transport/eio.py``'s Engine.IO server:
its figures are printed at the end of the session. Node and npm are required: these tests fail
rather than skip without them, like the socket.io-client tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import engineio
import pytest
import socketio
from aiohttp import web

from gamegw.server.transport.eio import ConformantServer
from tests.conftest import Gateway, report_line
from tests.stock_socketio import make_app
from tests.unit.test_protocol_doc import table

REPO = Path(__file__).resolve().parents[2]
# The suites ship beside the repository (../shared/conformance); tests/conformance is a copy of
# them, byte for byte (test_the_copied_suites_are_the_shipped_ones), so that a clone elsewhere
# (CI's) runs them too.
SHIPPED = REPO.parent / "shared" / "conformance"
CONFORMANCE = SHIPPED if (SHIPPED / "run").is_file() else REPO / "tests" / "conformance"
RUN = CONFORMANCE / "run"
RUN_TIMEOUT_S = 360  # a first run installs the suites' Node modules (npm) before running
SUITE_SETTINGS = {"ping_interval_s": 0.3, "ping_timeout_s": 0.2, "max_message_bytes": 1_000_000}

ENGINEIO_TOTAL = 24
SOCKETIO_TOTAL = 32

# Engine.IO suite tests that end by expecting a raw Engine.IO message (``4hello``, a binary
# frame) echoed back: the suite's own app is an Engine.IO echo server. For a Socket.IO server
# such a message is a Socket.IO packet that does not parse (``hello``) or a binary attachment
# nobody announced, and the session is closed (as Node's socket.io closes it). Every step
# before the echo holds: the two "ignores ... after upgrade" tests pass word for word, without
# the echo, in the Socket.IO suite, and tests/integration/test_engineio.py checks the upgrade's
# steps (probe, NOOP to the pending poll, ``5``, no NOOP on the websocket).
ENGINEIO_ECHO = frozenset({
    "Engine.IO protocol > message > HTTP long-polling > sends and receives a payload containing one plain text packet",
    "Engine.IO protocol > message > HTTP long-polling > sends and receives a payload containing several plain text "
    "packets",
    "Engine.IO protocol > message > HTTP long-polling > sends and receives a payload containing plain text and binary "
    "packets",
    "Engine.IO protocol > message > WebSocket > sends and receives a plain text packet",
    "Engine.IO protocol > message > WebSocket > sends and receives a binary packet",
    "Engine.IO protocol > upgrade > successfully upgrades from HTTP long-polling to WebSocket",
    "Engine.IO protocol > upgrade > ignores HTTP requests with same sid after upgrade",
    "Engine.IO protocol > upgrade > ignores WebSocket connection with same sid after upgrade",
})

# Socket.IO suite tests that need its reference app (namespaces "/" and "/custom", an "auth"
# event echoing the CONNECT payload, "message-back" and "message-with-ack" handlers). gamegw
# serves /game only, and refuses every other namespace with invalid_namespace (4404) in
# Socket.IO v5's {message, data} form; the suite expects the Node server's own text
# ({"message": "Invalid namespace"}, no data). One line each in docs/protocol.md.
SOCKETIO_REFERENCE_APP = frozenset({
    "Socket.IO protocol > connect > should allow connection to the main namespace",
    "Socket.IO protocol > connect > should allow connection to the main namespace with a payload",
    "Socket.IO protocol > connect > should allow connection to a custom namespace",
    "Socket.IO protocol > connect > should allow connection to a custom namespace with a payload",
    "Socket.IO protocol > connect > should disallow connection to an unknown namespace",
    "Socket.IO protocol > disconnect > should disconnect from the main namespace",
    "Socket.IO protocol > disconnect > should connect then disconnect from a custom namespace",
    "Socket.IO protocol > message > should send a plain-text packet",
    "Socket.IO protocol > message > should send a packet with binary attachments",
    "Socket.IO protocol > message > should send a plain-text packet with an ack",
    "Socket.IO protocol > message > should send a packet with binary attachments and an ack",
    "Socket.IO protocol > message > should close the connection upon invalid format (unknown packet type)",
    "Socket.IO protocol > message > should close the connection upon invalid format (invalid payload format)",
    "Socket.IO protocol > message > should close the connection upon invalid format (invalid ack id)",
})


@dataclass(frozen=True)
class SuiteRun:
    suite: str
    passed: int
    failed: int
    passing: frozenset[str]  # full titles, "describe > describe > test"
    failing: frozenset[str]
    output: str

    @property
    def figure(self) -> str:
        return f"{self.passed} passed, {self.failed} failed"


def parse_spec(output: str) -> tuple[set[str], set[str]]:
    """(passing, failing) full test titles from mocha's spec report (its tree, before the totals)."""
    passing: set[str] = set()
    failing: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in output.splitlines():
        if re.match(r"^\s+\d+ (passing|failing|pending)", line):
            break
        text = line.strip()
        if not text:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [title for _, title in stack]
        if text.startswith("✔"):
            title = re.sub(r" \(\d+ms\)$", "", text[1:].strip())
            passing.add(" > ".join([*path, title]))
        elif m := re.match(r"^\d+\) (.+)$", text):
            failing.add(" > ".join([*path, m.group(1)]))
        else:
            stack.append((indent, text))
    return passing, failing


@pytest.fixture(scope="session")
def conformance_cache() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are required for the conformance suites (CI must run them, so they do not skip)")
    if not RUN.is_file():
        pytest.fail(f"the conformance suites are not at {CONFORMANCE}")
    cache = Path(os.environ.get("CONFORMANCE_CACHE") or Path.home() / ".cache" / "gamegw-conformance")
    cache.mkdir(parents=True, exist_ok=True)
    return cache


async def run_suite(suite: str, url: str, cache: Path) -> SuiteRun:
    """One suite against a listening server, without blocking the event loop it is served from."""
    lock = os.open(cache / ".lock", os.O_CREAT | os.O_RDWR)  # one npm install at a time into the cache
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        proc = await asyncio.create_subprocess_exec(
            "bash", str(RUN), suite, url, env={**os.environ, "CONFORMANCE_CACHE": str(cache)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            out, _ = await proc.communicate()
            pytest.fail(f"the {suite} suite did not finish within {RUN_TIMEOUT_S} s:\n{out.decode()[-3000:]}")
    finally:
        os.close(lock)  # releases the lock
    output = out.decode()
    last = re.search(r"^(\d+) passed, (\d+) failed$", output, re.MULTILINE)
    assert last is not None, f"no figure from the {suite} suite:\n{output[-3000:]}"
    passing, failing = parse_spec(output)
    return SuiteRun(suite, int(last.group(1)), int(last.group(2)), frozenset(passing), frozenset(failing), output)


def suite_titles(suite: str) -> frozenset[str]:
    """The test titles (last part) written in a suite's source."""
    source = (CONFORMANCE / suite / "test-suite.env.js").read_text()
    return frozenset(re.findall(r'^\s*it\("([^"]+)"', source, re.MULTILINE))


def explain(run: SuiteRun, expected: frozenset[str]) -> str:
    return (f"{run.suite}: {run.figure}\nnewly failing: {sorted(run.failing - expected)}\n"
            f"no longer failing: {sorted(expected - run.failing)}\n\n{run.output[-6000:]}")


@pytest.fixture
async def suite_gateway(gateway_factory: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await gateway_factory(**SUITE_SETTINGS)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_gamegw_passes_every_applicable_engineio_test(suite_gateway: Gateway, conformance_cache: Path,
                                                            request: pytest.FixtureRequest) -> None:
    run = await run_suite("engine.io", suite_gateway.url, conformance_cache)
    report_line(request.config, f"engine.io suite, gamegw: {run.figure}")
    assert (run.passed, run.failed) == (ENGINEIO_TOTAL - len(ENGINEIO_ECHO), len(ENGINEIO_ECHO)), explain(
        run, ENGINEIO_ECHO)
    assert run.failing == ENGINEIO_ECHO, explain(run, ENGINEIO_ECHO)


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
async def test_gamegw_passes_every_socketio_test_but_the_reference_apps(
        suite_gateway: Gateway, conformance_cache: Path, request: pytest.FixtureRequest) -> None:
    run = await run_suite("socket.io", suite_gateway.url, conformance_cache)
    report_line(request.config, f"socket.io suite, gamegw: {run.figure}")
    expected = (SOCKETIO_TOTAL - len(SOCKETIO_REFERENCE_APP), len(SOCKETIO_REFERENCE_APP))
    assert (run.passed, run.failed) == expected, explain(run, SOCKETIO_REFERENCE_APP)
    assert run.failing == SOCKETIO_REFERENCE_APP, explain(run, SOCKETIO_REFERENCE_APP)


class _OnConformantEngineio(socketio.AsyncServer):  # type: ignore[misc]
    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return ConformantServer


@pytest.fixture
async def reference_app() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(server_class: type[socketio.AsyncServer]) -> str:
        app = make_app(ping_interval_s=SUITE_SETTINGS["ping_interval_s"],
                       ping_timeout_s=SUITE_SETTINGS["ping_timeout_s"],
                       max_payload=int(SUITE_SETTINGS["max_message_bytes"]), server_class=server_class)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
        runners.append(runner)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
async def test_stock_python_socketio_figures(reference_app: Callable[..., Awaitable[str]], conformance_cache: Path,
                                             request: pytest.FixtureRequest) -> None:
    """For the record: python-socketio as it is (the figures are printed, not held to)."""
    url = await reference_app(socketio.AsyncServer)
    engine = await run_suite("engine.io", url, conformance_cache)
    sock = await run_suite("socket.io", url, conformance_cache)
    report_line(request.config, f"engine.io suite, stock python-socketio: {engine.figure}")
    report_line(request.config, f"socket.io suite, stock python-socketio (reference app): {sock.figure}")
    # every test ran. Mocha may report a failure twice, the second time wherever its tree has got
    # to (with stock python-socketio the HTTP 400 to a second websocket can land after its test
    # has ended), so the titles are counted by their last part, and the totals at least
    for run, total in ((engine, ENGINEIO_TOTAL), (sock, SOCKETIO_TOTAL)):
        reported = run.passing | run.failing
        assert {title.split(" > ")[-1] for title in reported} == suite_titles(run.suite), run.output[-3000:]
        assert len(reported) >= total and run.passed + run.failed >= total, run.output[-3000:]


@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
async def test_reference_app_on_the_conformant_engineio_server(
        reference_app: Callable[..., Awaitable[str]], conformance_cache: Path, request: pytest.FixtureRequest) -> None:
    """server/transport/eio.py owes nothing to gamegw: under python-socketio's own reference app it passes
    every Engine.IO test a Socket.IO server can, and the Socket.IO suite but for python-socketio's
    refusal of an unknown namespace (a bare string, Socket.IO v4's form; gamegw has its own).

    One more may fail, by a race that is not the server's: python-engineio's websocket driver
    accepts permessage-deflate, with which the suite's client (Node's ``ws``) compresses "5" on
    a worker thread, and the GET that the test sends next can overtake it; the server, still
    upgrading, answers that GET with a NOOP. gamegw's driver refuses compression by default,
    as Node's engine.io does."""
    url = await reference_app(_OnConformantEngineio)
    engine = await run_suite("engine.io", url, conformance_cache)
    sock = await run_suite("socket.io", url, conformance_cache)
    report_line(request.config, f"engine.io suite, python-socketio on server/transport/eio.py: {engine.figure}")
    report_line(request.config,
                f"socket.io suite, python-socketio on server/transport/eio.py (reference app): {sock.figure}")
    assert engine.failing == ENGINEIO_ECHO, explain(engine, ENGINEIO_ECHO)
    assert engine.passed == ENGINEIO_TOTAL - len(ENGINEIO_ECHO), explain(engine, ENGINEIO_ECHO)
    unknown_namespace = "Socket.IO protocol > connect > should disallow connection to an unknown namespace"
    deflate_race = "Engine.IO protocol > upgrade > should ignore HTTP requests with same sid after upgrade"
    assert unknown_namespace in sock.failing, explain(sock, frozenset({unknown_namespace}))
    assert sock.failing - {deflate_race} == {unknown_namespace}, explain(sock, frozenset({unknown_namespace}))
    assert sock.passed == SOCKETIO_TOTAL - len(sock.failing), explain(sock, frozenset({unknown_namespace}))


def test_the_protocol_reference_lists_each_test_that_needs_the_reference_app() -> None:
    """docs/protocol.md ("Conformance") has one line, with its reason, per failure held to above."""
    rows = table("Conformance", "test", "needs").rows
    documented = {"Socket.IO protocol > " + row["test"].replace(": ", " > ", 1) for row in rows}
    assert documented == SOCKETIO_REFERENCE_APP
    assert all(row["needs"] for row in rows)


def test_the_copied_suites_are_the_shipped_ones() -> None:
    """tests/conformance is ../shared/conformance, unchanged (where the latter is at hand)."""
    copy = REPO / "tests" / "conformance"
    files = sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file())
    assert Path("run") in files and Path("engine.io/test-suite.env.js") in files
    if not SHIPPED.is_dir():
        return
    shipped = sorted(p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file())
    assert files == shipped
    assert all((copy / f).read_bytes() == (SHIPPED / f).read_bytes() for f in files)
