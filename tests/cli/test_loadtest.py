"""`gamectl loadtest`: real Locust processes playing against a real gateway, counted on both sides."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cli.run import gamectl

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
