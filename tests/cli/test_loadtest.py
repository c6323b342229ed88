"""`gamectl loadtest`: real Locust processes playing against a real gateway, counted on both sides."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli.run import gamectl, start_gamectl

pytestmark = pytest.mark.timeout(180)


async def metrics(url: str) -> dict[str, float]:
    """The gateway's own counters, read by the test (not through gamectl)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def delta(before: dict[str, float], after: dict[str, float], key: str) -> int:
    return int(after.get(key, 0) - before.get(key, 0))


async def loadtest(url: str, *args: str, **env: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await gamectl("loadtest", "--host", url, "--json", *args, timeout=120, **env)
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        report = {}
    return code, report, err


def read_baselines(run_parent: Path) -> list[dict[str, Any]]:
    """What each Locust process read of itself just before its first player."""
    return [json.loads(f.read_text()) for f in run_parent.glob("gamegw-loadtest-*/baseline-*.json")]


def check_progress_rates(run_parent: Path, *, players: int, moves_per_s: float) -> None:
    """moves/s in the progress lines is never 0 while moves are being counted, and near the
    offered rate once every player has played for a while."""
    [progress] = run_parent.glob("gamegw-loadtest-*/progress.jsonl")
    lines = [json.loads(raw) for raw in progress.read_text().splitlines()]
    lines = [line for line in lines if "final" not in line]
    first_move = next(line["t"] for line in lines if line["names"]["move"]["count"])
    for prev, line in itertools.pairwise(lines):
        move = line["names"]["move"]
        if move["count"] > prev["names"]["move"]["count"]:
            assert move["rps"] > 0, (line["t"] - first_move, move)
        if line["state"] == "running" and line["t"] - first_move >= 2.5:
            assert 0.3 * players * moves_per_s <= move["rps"] <= 1.7 * players * moves_per_s, move


@pytest.mark.parametrize("workers", [0, 2])
async def test_counts_match_the_gateway_and_the_csv(gateway_factory, tmp_path: Path, workers: int) -> None:
    gw = await gateway_factory()
    before = await metrics(gw.url)
    prefix = tmp_path / "run"
    code, report, err = await loadtest(gw.url, "-u", "24", "-r", "240", "-t", "4s", "--room-size", "6",
                                       "--move-rate", "2", "--workers", str(workers),
                                       "--metrics-url", gw.url + "/metrics", "--csv", str(prefix),
                                       TMPDIR=str(tmp_path))  # where gamectl keeps the run's files
    after = await metrics(gw.url)
    assert code == 0, err
    assert report["ok"] and report["violations"] == []
    req = report["requests"]
    assert (req["connect"]["count"], req["connect"]["failures"]) == (24, 0)
    assert (req["join"]["count"], req["join"]["failures"]) == (24, 0)
    assert report["total"]["failures"] == 0

    # What the players recorded is what the gateway saw.
    moves = req["move"]["count"]
    assert moves >= 24 * 2 * 2  # 24 players, 2 moves/s, at least 2 s of play
    assert moves == delta(before, after, "gamegw_moves_total")
    assert moves == delta(before, after, "gamegw_acks_total|event=move|result=ok")
    assert delta(before, after, "gamegw_connects_total") == 24
    deliveries = delta(before, after, "gamegw_deliveries_total")
    # every move reaches its room of 6 (sender included), but the last ones race the players' goodbyes
    assert 0.9 * moves * 6 <= req["broadcast"]["count"] <= deliveries <= moves * 6

    # ... and what the summary reports of the gateway, from --metrics-url.
    server = report["server"]
    assert (server["connects"], server["moves"], server["deliveries"]) == (24, moves, deliveries)
    assert server["peak_connections"] == 24
    assert server["refusals"] == {} and server["error_acks"] == {}
    # CPU per 1k deliveries in ms, as the README and bench_capacity.py speak of it
    assert "cpu_s_per_1k_deliveries" not in server
    assert server["cpu_ms_per_1k_deliveries"] == pytest.approx(server["cpu_s"] * 1e6 / deliveries,
                                                               abs=0.005 * 1e6 / deliveries + 0.01)
    assert report["loadgen"]["processes"] == workers + 1
    assert report["loadgen"]["cpu_us_per_s_per_player"] > 0
    # A player (its greenlet, socket and buffers) costs tens of KB. Read against a baseline taken
    # once the progress showed the test running, this said ~0 (the players, all spawned in the
    # first 0.1 s, were in the baseline) or hundreds (the first player's one-off imports, ~9 MB,
    # counted as the players' memory), depending on when that reading fell.
    assert 8 <= report["loadgen"]["rss_kb_per_player"] <= 200, report["loadgen"]
    # ... so each process reads itself just before its first player, and the summary counts from that
    baselines = read_baselines(tmp_path)
    assert len(baselines) == workers + 1
    assert report["loadgen"]["rss_kb_before_players"] == sum(b["rss_kb"] for b in baselines)
    for name, e in req.items():  # Locust's percentiles come off rounded buckets; the max is exact
        assert e["p50"] <= e["p90"] <= e["p99"] <= e["max"], (name, e)
    check_progress_rates(tmp_path, players=24, moves_per_s=2)

    lines = Path(f"{prefix}_stats.csv").read_text().splitlines()  # noqa: ASYNC240 (a small local file)
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(lines)}
    for name in ("connect", "join", "move", "broadcast"):
        assert int(rows[("sio", name)]["Request Count"]) == req[name]["count"]
        assert int(rows[("sio", name)]["Failure Count"]) == 0
    assert Path(f"{prefix}_stats_history.csv").stat().st_size > 0  # noqa: ASYNC240


async def test_workers_auto_runs_one_per_cpu_and_shows_each_ones_players_and_cost(gateway_factory,
                                                                                   tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    gw = await gateway_factory()
    before = await metrics(gw.url)
    players = 6 * cpus
    code, report, err = await loadtest(gw.url, "-u", str(players), "-r", "200", "-t", "4s", "--room-size", "3",
                                       "--move-rate", "2", "--workers", "auto", TMPDIR=str(tmp_path))
    after = await metrics(gw.url)
    assert code == 0, err
    assert report["run"]["workers"] == cpus
    assert report["loadgen"]["processes"] == cpus + 1  # the master holds no player
    each = report["loadgen"]["per_process"]
    assert [w["role"] for w in each] == [f"worker-{i}" for i in range(cpus)]
    # Locust shares the players out evenly; each worker wrote how many it held
    assert [w["players"] for w in each] == [6] * cpus
    assert sorted(w["pid"] for w in each) == sorted(json.loads(f.read_text())["pid"]
                                                   for f in tmp_path.glob("gamegw-loadtest-*/players-*.json"))  # noqa: ASYNC240
    for w in each:
        assert w["cpu_us_per_s_per_player"] > 0 and w["cpu_cores"] > 0, w
        assert 0 < w["rss_kb_per_player"] <= 400, w
    req = report["requests"]
    assert (req["connect"]["count"], req["join"]["count"], report["total"]["failures"]) == (players, players, 0)
    assert req["move"]["count"] == delta(before, after, "gamegw_moves_total")


async def test_workers_must_be_a_count_or_auto() -> None:
    for bad in ("many", "-1", "65"):
        code, _, err = await gamectl("loadtest", "--workers", bad)
        assert code == 2 and "--workers" in err and "auto" in err, (bad, err)


async def test_storm_players_drop_and_resume(gateway_factory) -> None:
    gw = await gateway_factory(grace_s=10)
    before = await metrics(gw.url)
    code, report, err = await loadtest(gw.url, "-u", "12", "-r", "12", "-t", "5s", "--room-size", "4",
                                       "--scenario", "storm", "--drop-every", "2s", "--reconnect-delay", "0.5s",
                                       "--move-rate", "4")
    after = await metrics(gw.url)
    assert code == 0, err
    req = report["requests"]
    resumes = req["resume"]["count"]
    assert resumes >= 12 and req["resume"]["failures"] == 0  # at least one mass drop, everyone resumed
    assert delta(before, after, "gamegw_resumes_total|result=resumed") == resumes
    drops = sum(delta(before, after, k) for k in after if k.startswith("gamegw_drops_total|"))
    assert drops >= resumes
    # no gap or repeat in any room's sequence, replayed moves included
    assert report["total"]["failures"] == 0
    assert req["replayed"]["count"] > 0


async def test_refused_players_fail_the_run(gateway_factory) -> None:
    gw = await gateway_factory()
    code, report, _ = await loadtest(gw.url, "-u", "5", "-r", "5", "-t", "2s",
                                     GAMEGW_JWT_SECRET="another-secret-0123456789-0123456789-xyz")
    assert code == 1
    assert not report["ok"] and "failure ratio" in report["violations"][0]
    assert {(e["name"], e["error"]) for e in report["errors"]} >= {("connect", "token_invalid")}


async def test_p99_threshold_fails_the_run(gateway_factory) -> None:
    gw = await gateway_factory()
    code, report, _ = await loadtest(gw.url, "-u", "4", "-r", "4", "-t", "2s", "--max-p99-ms", "0")
    assert code == 1
    assert report["total"]["failures"] == 0
    assert any(v.startswith("move p99") for v in report["violations"])


async def test_bad_usage_and_an_unreachable_gateway(tmp_path: Path) -> None:
    code, _, err = await gamectl("loadtest", "--scenario", "nope")
    assert code == 2 and "--scenario" in err
    code, _, err = await gamectl("loadtest", "--host", "http://127.0.0.1:9", "-t", "1s")
    assert code == 1 and "does not answer /healthz" in err and "hint" in err


# -- --web: Locust's web UI drives the swarm ----------------------------------------------------

class WebRun:
    """``gamectl loadtest --web`` running: the UI's URL (its first line of output), then its summary."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc, self.url = proc, url

    async def swarm(self, http: aiohttp.ClientSession, users: int, spawn_rate: float, host: str) -> None:
        """What the page's start button (and its edit of a running swarm) sends."""
        form = {"user_count": str(users), "spawn_rate": str(spawn_rate), "host": host}
        async with http.post(self.url + "/swarm", data=form) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["success"], body

    async def stop(self, http: aiohttp.ClientSession) -> None:
        async with http.post(self.url + "/stop") as resp:
            assert (await resp.json())["success"]

    async def end(self, sig: int | None = signal.SIGINT) -> tuple[int, dict[str, Any], str]:
        """Ctrl-C (or, with ``sig=None``, wait for the run to end by itself): code, summary, stderr."""
        if sig is not None:
            self.proc.send_signal(sig)
        out, err = await asyncio.wait_for(self.proc.communicate(), 90)
        assert self.proc.returncode is not None
        return self.proc.returncode, json.loads(out) if out.strip() else {}, err.decode()


@asynccontextmanager
async def web_loadtest(url: str, *args: str, **env: str) -> AsyncIterator[WebRun]:
    proc = await start_gamectl("loadtest", "--host", url, "--web", "--web-port", "0", "--json", *args, **env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first, (await proc.stderr.read()).decode()
        yield WebRun(proc, json.loads(first)["web_ui"])
    finally:
        if proc.returncode is None:  # a failed test: SIGTERM ends the run as Ctrl-C does, Locust included
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), 60)


async def players_play(url: str, before: dict[str, float], players: int, timeout_s: float = 30) -> None:
    """The gateway holds exactly ``players`` connections, and (when there are any) counts moves."""
    deadline = time.monotonic() + timeout_s
    moved: int | None = None
    while True:
        now = await metrics(url)
        moves = delta(before, now, "gamegw_moves_total")
        if now.get("gamegw_connections") == players:
            if players == 0:
                return
            if moved is None:
                moved = moves
            elif moves >= moved + players:
                return
        else:
            moved = None
        assert time.monotonic() < deadline, (players, now.get("gamegw_connections"), moves)
        await asyncio.sleep(0.2)


def template_args(page: str) -> dict[str, Any]:
    """What Locust's page renders its form from."""
    start = page.index("window.templateArgs = ") + len("window.templateArgs = ")
    args, _ = json.JSONDecoder().raw_decode(page, start)
    return dict(args)


def check_csv(prefix: Path, requests: dict[str, Any]) -> None:
    lines = Path(f"{prefix}_stats.csv").read_text().splitlines()
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(lines)}
    for name in ("connect", "join", "move", "broadcast"):
        assert int(rows[("sio", name)]["Request Count"]) == requests[name]["count"], name


@pytest.mark.parametrize("workers", [0, 2])
async def test_web_ui_starts_grows_and_stops_the_swarm(gateway_factory, tmp_path: Path, workers: int) -> None:
    gw = await gateway_factory()
    before = await metrics(gw.url)
    prefix = tmp_path / "run"
    async with web_loadtest(gw.url, "-u", "6", "-r", "60", "--room-size", "4", "--move-rate", "2",
                            "--workers", str(workers), "--metrics-url", gw.url + "/metrics", "--csv", str(prefix),
                            TMPDIR=str(tmp_path)) as run, aiohttp.ClientSession() as http:
        assert run.url.startswith("http://127.0.0.1:")
        async with http.get(run.url) as resp:
            page = await resp.text()
        assert resp.status == 200 and "<title>Locust</title>" in page and '<div id="root">' in page
        args = template_args(page)  # the command's flags are the page's defaults
        assert (args["num_users"], args["spawn_rate"], args["host"]) == (6, 60.0, gw.url)
        assert (args["is_distributed"], args["worker_count"]) == (workers > 0, workers)  # workers are in

        started = time.monotonic()
        await run.swarm(http, 8, 100, gw.url)
        await players_play(gw.url, before, 8)
        await run.swarm(http, 12, 100, gw.url)  # grow the running swarm
        await players_play(gw.url, before, 12)
        await run.stop(http)  # answers once the players have stopped
        ran = time.monotonic() - started
        await players_play(gw.url, before, 0)
        await asyncio.sleep(1.5)
        code, report, err = await run.end()  # then Ctrl-C ends the run
    after = await metrics(gw.url)
    assert code == 0, err
    assert report["ok"], report["violations"]
    assert report["run"]["web"] == {"url": run.url, "starts": 1, "peak_users": 12}
    assert report["run"]["users"] == 12 and report["run"]["run_time_s"] is None
    req = report["requests"]
    assert (req["connect"]["count"], req["join"]["count"], report["total"]["failures"]) == (12, 12, 0)
    moves = req["move"]["count"]
    assert moves > 0 and moves == delta(before, after, "gamegw_moves_total") == report["server"]["moves"]
    assert report["server"]["connects"] == 12
    # a gauge read once per progress tick: the 12 may have lasted less than a tick (CI saw 8)
    assert 8 <= report["server"]["peak_connections"] <= 12
    assert report["loadgen"]["processes"] == workers + 1
    # from the start to the stop on the page, not to the Ctrl-C
    assert 0.5 <= report["run"]["measured_s"] <= ran + 0.1
    check_csv(prefix, req)


@pytest.mark.parametrize("workers", [0, 2])
async def test_web_ctrl_c_while_the_swarm_plays_counts_every_move(gateway_factory, tmp_path: Path,
                                                                  workers: int) -> None:
    """Ctrl-C without a stop on the page: the players stop before the totals are written (a lone
    Locust process wrote them while its players still played, and stopped them only after)."""
    gw = await gateway_factory()
    before = await metrics(gw.url)
    prefix = tmp_path / "run"
    async with web_loadtest(gw.url, "-u", "12", "-r", "100", "--room-size", "4", "--move-rate", "4",
                            "--workers", str(workers), "--csv", str(prefix)) as run, aiohttp.ClientSession() as http:
        await run.swarm(http, 12, 100, gw.url)
        await players_play(gw.url, before, 12)
        await asyncio.sleep(1.5)
        code, report, err = await run.end()
    after = await metrics(gw.url)
    assert code == 0, err
    req = report["requests"]
    assert (req["connect"]["count"], report["total"]["failures"]) == (12, 0)
    assert req["move"]["count"] == delta(before, after, "gamegw_moves_total")
    assert req["move"]["count"] == delta(before, after, "gamegw_acks_total|event=move|result=ok")
    assert after["gamegw_connections"] == 0
    check_csv(prefix, req)


async def test_web_run_time_counts_from_the_first_start_and_the_summary_from_the_last(gateway_factory) -> None:
    gw = await gateway_factory()
    before = await metrics(gw.url)
    async with web_loadtest(gw.url, "-u", "3", "-r", "100", "-t", "8s", "--room-size", "4", "--move-rate", "2",
                            "--metrics-url", gw.url + "/metrics") as run, aiohttp.ClientSession() as http:
        started = time.monotonic()
        await run.swarm(http, 3, 100, gw.url)
        await players_play(gw.url, before, 3)
        await run.stop(http)
        await players_play(gw.url, before, 0)
        await run.swarm(http, 5, 100, gw.url)  # a second start: Locust clears its statistics
        await players_play(gw.url, before, 5)
        code, report, err = await run.end(sig=None)  # no Ctrl-C: --run-time ends the run
        took = time.monotonic() - started
    assert code == 0, err
    assert 8 <= took < 8 + 20
    assert report["run"]["web"]["starts"] == 2 and report["run"]["run_time_s"] == 8
    assert report["requests"]["connect"]["count"] == 5  # the last start
    assert report["server"]["connects"] == 3 + 5  # the gateway: the whole session


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the chromium package")
async def test_web_ui_renders_in_a_browser(gateway_factory, tmp_path: Path) -> None:
    gw = await gateway_factory()
    async with web_loadtest(gw.url, "-u", "7", "-r", "30") as run:
        browser = await asyncio.create_subprocess_exec(
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=10000", "--dump-dom", run.url, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        dom, _ = await asyncio.wait_for(browser.communicate(), 90)
        code, report, _ = await run.end()
    # the page's script rendered the start form, filled with the command's defaults
    inputs = {m["name"]: m["value"] for m in (dict(re.findall(r'(name|value)="([^"]*)"', tag))
                                              for tag in re.findall(r"<input[^>]*>", dom.decode()))
              if "name" in m and "value" in m}
    assert (inputs["userCount"], inputs["spawnRate"], inputs["host"]) == ("7", "30", gw.url), inputs
    # never started from the page: nothing ran, and the run says so
    assert code == 1 and report["violations"] == ["no request was recorded"]


async def test_web_port_in_use_is_refused() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = await gamectl("loadtest", "--web", "--web-port", str(busy.getsockname()[1]))
    assert code == 1 and "in use" in err and "--web-port 0" in err


async def test_idle_players_hold_their_connections_and_resume_a_drop_at_once(gateway_factory) -> None:
    """Idle players only answer heartbeats: no moves, and no timer of their own (only the end of
    a connection wakes one), yet a dropped player resumes at once, not at some later tick."""
    gw = await gateway_factory(grace_s=10)
    before = await metrics(gw.url)
    run = asyncio.create_task(loadtest(gw.url, "-u", "4", "-r", "4", "-t", "6s", "--room-size", "2",
                                       "--scenario", "idle"))
    users: list[str] = []
    deadline = time.monotonic() + 30
    while len(users) < 4 and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        code, out, _ = await gamectl("connections", "ls", "--json", "--url", gw.url)
        users = sorted(c["user_id"] for c in json.loads(out)["connections"] if c["rooms"]) if code == 0 else []
    assert len(users) == 4, users
    code, out, err = await gamectl("simulate-drop", users[0], "--wait", "5", "--json", "--url", gw.url)
    assert code == 0, (out, err)
    assert json.loads(out)["resumed"] is True
    code, report, err = await run
    after = await metrics(gw.url)
    req = report["requests"]
    assert (req["connect"]["count"], req["connect"]["failures"]) == (4, 0)
    assert (req["join"]["count"], req["join"]["failures"]) == (4, 0)
    assert (req["lost"]["count"], req["resume"]["count"], req["resume"]["failures"]) == (1, 1, 0)
    assert delta(before, after, "gamegw_resumes_total|result=resumed") == 1
    assert delta(before, after, "gamegw_connects_total") == 5  # the resume is a connect too
    assert delta(before, after, "gamegw_moves_total") == 0 and req.get("move", {}).get("count", 0) == 0


@pytest.mark.parametrize("phase", ["aligned", "random"])
async def test_tick_phase_aligned_moves_every_player_on_the_clocks_whole_periods(gateway_factory, players,
                                                                                 phase: str) -> None:
    """--tick-phase aligned: every player moves on the wall clock's whole periods (the send time its
    moves carry, ``action.t``, is just past a multiple of the period); random: spread over it."""
    gw = await gateway_factory()
    run = asyncio.create_task(loadtest(gw.url, "-u", "6", "-r", "60", "-t", "6s", "--room-size", "6",
                                       "--move-rate", "2", "--tick-phase", phase))
    room = ""
    deadline = time.monotonic() + 30
    while not room and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        code, out, _ = await gamectl("connections", "ls", "--json", "--url", gw.url)
        rooms = [r for c in json.loads(out)["connections"] for r in c["rooms"]] if code == 0 else []
        room = rooms[0] if rooms else ""
    assert room, "no player joined a room"
    watcher = await players(gw.url, gw.token("watcher"))
    assert (await watcher.call("join", {"room": room}))["ok"]
    await asyncio.sleep(2.5)
    code, _, err = await run
    assert code == 0, err
    phases = sorted(m["action"]["t"] % 500 for m in watcher.events["move"])  # ms into the 0.5 s period
    assert len(phases) >= 24, phases  # 6 players x 2 moves/s, 2 s at least
    late = [p for p in phases if p >= 100]  # a tick runs up to 5 ms late; a busy machine adds to that
    if phase == "aligned":
        assert not late, phases
    else:  # uniform over the period: 24 phases all under 100 ms would be a 1 in 5^24 chance
        assert len(late) >= len(phases) // 2, phases
