"""`gamectl loadtest`: real Locust processes playing against a real gateway, counted on both sides."""

from __future__ import annotations

import csv
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


@pytest.mark.parametrize("workers", [0, 2])
async def test_counts_match_the_gateway_and_the_csv(gateway_factory, tmp_path: Path, workers: int) -> None:
    gw = await gateway_factory()
    before = await metrics(gw.url)
    prefix = tmp_path / "run"
    code, report, err = await loadtest(gw.url, "-u", "24", "-r", "24", "-t", "4s", "--room-size", "6",
                                       "--move-rate", "2", "--workers", str(workers),
                                       "--metrics-url", gw.url + "/metrics", "--csv", str(prefix))
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
    assert server["cpu_s_per_1k_deliveries"] > 0
    assert report["loadgen"]["processes"] == workers + 1
    assert report["loadgen"]["cpu_us_per_s_per_player"] > 0

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
