#!/usr/bin/env python3
"""Failover: N Locust players (`gamectl loadtest`) on two gateways over Redis Sentinel, the
master SIGKILLed mid-run.

The deployment is the tests' own (tests/sentinel.py): a master, a replica and three sentinels
on free ports of 127.0.0.1 (`down-after-milliseconds` 400 unless --down-after-ms), in a
temporary directory; two `gamectl serve` (configs/bench.toml) over its `redis+sentinel://` URL,
with a per-run key and key prefix. Players alternate between the gateways, so every room spans
both (no move can be played locally while the master is away: each waits for the failover).

--kill-at seconds after every player has been started, the master gets SIGKILL. Measured:

* failover_s: until every sentinel names the promoted replica and it answers as master;
* acked_again_s: from the kill until both gateways have re-asserted their state
  (`gamegw_redis_recoveries_total`) and accept moves again (`gamegw_moves_total` grows);
* moves_lost: `gamegw_moves_lost_total` on both (acknowledged, then lost with the master);
* seq_repeats: players that saw a room's seq again (the locustfile's `repeat` failures; must be 0);
* disconnected / resumed: players whose connection the gateway closed (`lost`) and the
  resumes that followed, with resume failures (all must resume).

Prints one JSON line, then a table. Exits 1 with a one-line message on a setup failure, and 1
when a seq repeated or a disconnected player did not resume.

Examples:
  .venv/bin/python loadtests/bench_failover.py --players 50 --seconds 20 --kill-at 5
  .venv/bin/python loadtests/bench_failover.py                  # 1000 players, 60 s, kill at 20 s
  .venv/bin/python loadtests/bench_failover.py --wait-replicas 1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import REPO, Gateway, SetupError, free_port_block, gamectl_path, raise_nofile, table

sys.path.insert(0, str(REPO))
from tests.sentinel import SentinelSet


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def total(gateways: list[Gateway], name: str) -> float:
    return sum(metric(gw.url, name) for gw in gateways)


def watch_recovery(gateways: list[Gateway], killed: float, timeout: float) -> float | None:
    """Seconds from the kill until both gateways have recovered and moves are accepted again."""
    before = [metric(gw.url, "gamegw_redis_recoveries_total") for gw in gateways]
    recovered: float | None = None
    moves = 0.0
    deadline = killed + timeout
    while time.monotonic() < deadline:
        try:
            now = [metric(gw.url, "gamegw_redis_recoveries_total") for gw in gateways]
            if recovered is None and all(n > b for n, b in zip(now, before, strict=True)):
                recovered, moves = time.monotonic(), total(gateways, "gamegw_moves_total")
            elif recovered is not None and total(gateways, "gamegw_moves_total") > moves:
                return time.monotonic() - killed
        except OSError:
            pass
        time.sleep(0.1)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gamegw-bench-failover-"))
    sentinels = SentinelSet(work / "sentinel", down_after_ms=args.down_after_ms)
    gateways: list[Gateway] = []
    secret = secrets.token_urlsafe(48)
    os.environ["GAMEGW_REDIS_WAIT_REPLICAS"] = str(args.wait_replicas)
    try:
        sentinels.start()
        base = free_port_block(2)
        prefix = "bf" + secrets.token_hex(4)  # one for both: they are one cluster
        gateways = [Gateway(base + k, secret, REPO / "configs" / "bench.toml", None, redis=sentinels.url,
                            prefix=prefix, logdir=work) for k in range(2)]
        for gw in gateways:
            gw.wait_ready()
        ramp_s = args.players / args.spawn_rate
        cmd = [gamectl_path(), "loadtest", "--users", str(args.players), "--spawn-rate", str(args.spawn_rate),
               "--run-time", f"{args.seconds}s", "--host", gateways[0].url, "--room-size", str(args.room_size),
               "--move-rate", str(args.move_rate), "--workers", str(args.workers), "--json"]
        env = dict(os.environ, GAMEGW_JWT_SECRET=secret, GAMEGW_LT_HOSTS=",".join(gw.url for gw in gateways))
        with open(work / "loadtest.err", "w") as err:
            load = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
            out: list[str] = []
            reader = threading.Thread(target=lambda: out.append(load.stdout.read() if load.stdout else ""))
            reader.start()
            time.sleep(ramp_s + args.kill_at)
            if load.poll() is not None:
                raise SetupError(f"gamectl loadtest ended before the kill (see {work / 'loadtest.err'})")
            old = sentinels.kill_master()
            killed = time.monotonic()
            failover_s = sentinels.wait_failover(old.port)
            acked_again_s = watch_recovery(gateways, killed, timeout=30)
            load.wait(args.seconds + ramp_s + 120)
            reader.join()
        try:
            report = json.loads(out[0])
        except (IndexError, json.JSONDecodeError):
            raise SetupError(f"gamectl loadtest printed no summary (see {work / 'loadtest.err'})") from None
        names = report.get("requests", {})
        repeats = sum(e["occurrences"] for e in report.get("errors", []) if "repeat" in e["error"])
        gaps = sum(e["occurrences"] for e in report.get("errors", []) if "gap" in e["error"])
        return {
            "players": args.players, "wait_replicas": args.wait_replicas,
            "failover_s": round(failover_s, 2),
            "acked_again_s": round(acked_again_s, 2) if acked_again_s is not None else None,
            "moves_acked": names.get("move", {}).get("count", 0) - names.get("move", {}).get("failures", 0),
            "move_failures": names.get("move", {}).get("failures", 0),
            "moves_lost": total(gateways, "gamegw_moves_lost_total"),
            "seq_repeats": repeats, "seq_gaps": gaps,
            "disconnected": names.get("lost", {}).get("count", 0),
            "resumed": names.get("resume", {}).get("count", 0) - names.get("resume", {}).get("failures", 0),
            "resume_failures": names.get("resume", {}).get("failures", 0),
            "redis_server_changes": total(gateways, "gamegw_redis_server_changes_total"),
            "logs": str(work),
        }
    finally:
        for gw in gateways:
            gw.stop()
        sentinels.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60, help="the loadtest's run time (after its ramp)")
    ap.add_argument("--kill-at", type=float, default=20.0, help="seconds after the ramp when the master dies")
    ap.add_argument("--spawn-rate", type=float, default=100.0)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--move-rate", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=0, help="Locust worker processes (0: one process)")
    ap.add_argument("--wait-replicas", type=int, default=0, help="GAMEGW_REDIS_WAIT_REPLICAS for the gateways")
    ap.add_argument("--down-after-ms", type=int, default=400, help="the sentinels' down-after-milliseconds")
    args = ap.parse_args()
    if args.kill_at >= args.seconds:
        ap.error("--kill-at must come before the end of --seconds")
    raise_nofile(args.players * 4 + 1000)
    try:
        row = run(args)
    except SetupError as exc:
        print(f"bench_failover: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(row), flush=True)
    print(table([(k, v) for k, v in row.items()]))
    return 1 if row["seq_repeats"] or row["resumed"] < row["disconnected"] or row["resume_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
