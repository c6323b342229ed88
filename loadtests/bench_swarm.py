#!/usr/bin/env python3
"""The load generator's own cost: one Locust worker (gamectl's players) beside the official Node
``socket.io-client`` (peer-bench's ``loadgen.js``), on the same load, in one run.

One gateway (configs/bench.toml, a random per-run key) is pinned to one CPU and each load
generator in turn to the other. The load: N players in rooms of --room-size consecutive players,
each moving --move-rate times a second, so each receives room-size x move-rate ``move`` events a
second. First Locust, started as ``gamectl loadtest`` starts it (its command line, one process),
then ``loadgen.js``. Each is measured in its steady state: once every player has joined and
--settle-s seconds more have passed, over --seconds seconds:

* ``cpu_us_per_s_per_player``: the generator process's user+system CPU (/proc) over the window,
  per second and per player;
* ``rss_kb_per_player``: its RSS at the end of the window less its RSS before the first player
  (Locust: the reading the locustfile takes of itself at its test start; Node: a node process
  that has loaded socket.io-client and jsonwebtoken and holds no player), per player;
* ``deliveries_per_s_per_player``: the gateway's ``gamegw_deliveries_total`` over the window, per
  second and per player, which shows that both carried the same load;
* ``system_cpu_share``: the part of that CPU spent in the kernel.

When the players move (--ticks) matters as much as how often. loadgen.js starts every player's
move interval in one loop, so all its players move in the same millisecond: the gateway answers
with one burst, and a read takes many frames at once. gamectl's players move at a random phase
each, so frames come one at a time (one read, one wake-up each). --ticks spread (the default)
runs both that way: Locust as it is, loadgen.js with ``node/spread_ticks.js`` preloaded, which
starts each interval after a random part of its period. --ticks aligned runs loadgen.js as
shipped and Locust with ``--tick-phase aligned``. Compare like with like: the load's timing
changed each generator's CPU by 1.5x to 2.5x.

With --profile FILE, py-spy records the Locust process over the window (collapsed stacks: one
line per stack and its sample count; --native adds C frames). --scenario idle drives Locust's
idle players alone (loadgen.js has no idle mode).

Prints one JSON line, then a table with the ratio Locust / Node. Exits 1 with a one-line message
on a setup failure. Examples:

  .venv/bin/python loadtests/bench_swarm.py --players 100 --seconds 5      # a check that it works
  .venv/bin/python loadtests/bench_swarm.py --players 1000
  .venv/bin/python loadtests/bench_swarm.py --players 5000 --spawn-rate 250
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchlib import (
    REPO,
    Gateway,
    NodeProc,
    SetupError,
    check_tools,
    cpu_ms,
    cpu_split_ms,
    free_port_block,
    node_modules,
    raise_nofile,
    rss_kb,
    run_and_report,
    table,
)

from gamegw.gamectl.loadtest import Plan

NAME = "bench_swarm"
LOADGEN = REPO.parent / "shared" / "peer-bench" / "node" / "loadgen.js"
if not LOADGEN.exists():
    LOADGEN = REPO / "loadtests" / "peer-bench" / "node" / "loadgen.js"
SPREAD_TICKS = REPO / "loadtests" / "node" / "spread_ticks.js"


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


def deliveries(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("gamegw_deliveries_total "):
                return float(line.split()[1])
    return 0.0


def window(pid: int, url: str, players: int, seconds: float, profile: str | None,
           native: bool = False) -> dict[str, float]:
    """CPU, RSS and the gateway's deliveries of one generator over the measuring window."""
    spy = None
    errlog = None
    if profile:
        errlog = open(profile + ".log", "wb")  # closed once py-spy is done
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        spy = subprocess.Popen([spy_bin, "record", "--pid", str(pid), "--duration", f"{seconds:.0f}", "--rate", "200",
                                "--format", "raw", "--output", profile, "--native" if native else "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=errlog)
    (user0, sys0), d0, t0 = cpu_split_ms([pid]), deliveries(url), time.monotonic()
    time.sleep(seconds)
    (user1, sys1), d1, t1 = cpu_split_ms([pid]), deliveries(url), time.monotonic()
    cpu0, cpu1 = user0 + sys0, user1 + sys1
    rss = rss_kb([pid])
    if spy is not None:
        spy.wait(60)
        if errlog is not None:
            errlog.close()
        if not Path(profile or "").exists():
            log(f"py-spy wrote no profile (exit {spy.returncode}); see {profile}.log")
    wall = t1 - t0
    return {"cpu_us_per_s_per_player": round((cpu1 - cpu0) * 1000 / wall / players, 1), "rss_kb": rss,
            "deliveries_per_s_per_player": round((d1 - d0) / wall / players, 2),
            "cpu_cores": round((cpu1 - cpu0) / wall / 1000, 3),
            "system_cpu_share": round((sys1 - sys0) / max(1e-9, cpu1 - cpu0), 2)}


def start_locust(args: argparse.Namespace, gw: Gateway, secret: str, run_dir: Path,
                 extra_s: float = 0.0) -> tuple[subprocess.Popen[bytes], Path]:
    """Locust as ``gamectl loadtest`` starts it (one process); returns once every player has joined."""
    progress = run_dir / "progress.jsonl"
    ramp_s = args.players / args.spawn_rate
    run_s = int(ramp_s + args.settle_s + args.seconds + extra_s + 60)  # ended by SIGINT once measured
    plan = Plan(users=args.players, spawn_rate=args.spawn_rate, run_time_s=run_s,
                scenario=args.scenario, host=gw.url, room_size=args.room_size, move_rate=args.move_rate, workers=0,
                remote_workers=0, master_host="127.0.0.1", master_port=0, token_cmd="", config=None, csv=None,
                html=None, drop_every_s=20, reconnect_delay_s=1, churn_every=5, stop_timeout_s=5,
                tick_phase="aligned" if args.ticks == "aligned" else "random")
    cmd, _ = plan.commands(run_dir, progress)
    if args.load_cpu is not None:
        cmd = ["taskset", "-c", str(args.load_cpu), *cmd]
    env = dict(os.environ, GAMEGW_JWT_SECRET=secret, GAMEGW_LT_BASELINE_DIR=str(run_dir))
    with open(run_dir / "locust.out", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + ramp_s + 60
        joined = 0
        while joined < args.players:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"Locust: {joined} of {args.players} players joined (log {run_dir})")
            time.sleep(0.5)
            lines = [json.loads(raw) for raw in progress.read_text().splitlines()] if progress.exists() else []
            joined = max([ln["names"]["join"]["count"] for ln in lines if "names" in ln] or [0])
    except BaseException:
        stop_locust(proc)
        raise
    log(f"Locust: {joined} players joined")
    return proc, progress


def locust_figures(got: dict[str, Any], args: argparse.Namespace, run_dir: Path, progress: Path) -> dict[str, Any]:
    baseline = json.loads(next(run_dir.glob("baseline-*.json")).read_text())
    got["rss_kb_per_player"] = round((got.pop("rss_kb") - baseline["rss_kb"]) / args.players, 1)
    last = [json.loads(raw) for raw in progress.read_text().splitlines()][-1]
    got["failures"] = last.get("failures", 0)
    return got


def stop_locust(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_locust(args: argparse.Namespace, gw: Gateway, secret: str, run_dir: Path) -> dict[str, Any]:
    proc, progress = start_locust(args, gw, secret, run_dir)
    try:
        log(f"Locust: settling {args.settle_s:g} s, then measuring {args.seconds:g} s")
        time.sleep(args.settle_s)
        got = window(proc.pid, gw.url, args.players, args.seconds, args.profile, args.native)
        return locust_figures(got, args, run_dir, progress)
    finally:
        stop_locust(proc)


def run_together(args: argparse.Namespace, gw: Gateway, secret: str, run_dir: Path) -> dict[str, Any]:
    """--together: both generators at once, each with its own N players (rooms of their own), on the
    same CPU, measured over the same window: on a busy machine both share whatever else runs there,
    so their ratio holds where two windows a minute apart do not (the gateway carries 2N players)."""
    base_kb = node_baseline_kb(args.load_cpu)
    ramp_s = args.players / args.spawn_rate
    move_s = ramp_s + 60 + args.settle_s + args.seconds + 5
    with loadgen(args, gw, secret, move_s) as gen:
        proc, progress = start_locust(args, gw, secret, run_dir, extra_s=move_s)
        try:
            log(f"both: settling {args.settle_s:g} s, then measuring {args.seconds:g} s")
            time.sleep(args.settle_s)
            pids = {"locust": proc.pid, "node": gen.proc.pid}
            cpu0, d0, t0 = {k: cpu_ms([p]) for k, p in pids.items()}, deliveries(gw.url), time.monotonic()
            time.sleep(args.seconds)
            cpu1, d1, t1 = {k: cpu_ms([p]) for k, p in pids.items()}, deliveries(gw.url), time.monotonic()
            wall = t1 - t0
            out: dict[str, Any] = {}
            for k, pid in pids.items():
                out[k] = {"cpu_us_per_s_per_player": round((cpu1[k] - cpu0[k]) * 1000 / wall / args.players, 1),
                          "rss_kb": rss_kb([pid]),
                          # the gateway's deliveries to both, per player of both
                          "deliveries_per_s_per_player": round((d1 - d0) / wall / (2 * args.players), 2),
                          "cpu_cores": round((cpu1[k] - cpu0[k]) / wall / 1000, 3)}
            locust_figures(out["locust"], args, run_dir, progress)
            out["node"]["rss_kb_per_player"] = round((out["node"].pop("rss_kb") - base_kb) / args.players, 1)
            out["node"]["failures"] = None  # loadgen.js counts its failures at its end, after this window
            return out
        finally:
            stop_locust(proc)


@contextlib.contextmanager
def loadgen(args: argparse.Namespace, gw: Gateway, secret: str, move_s: float) -> Iterator[NodeProc]:
    """peer-bench's loadgen.js with every player connected (its moves last ``move_s``); stopped after."""
    env = {"NODE_OPTIONS": f"--require {SPREAD_TICKS}"} if args.ticks == "spread" else None
    gen = NodeProc(LOADGEN, [gw.url, str(args.players), str(args.room_size), str(args.move_rate), f"{move_s:g}"],
                   secret, args.load_cpu, env=env)
    try:
        connected = gen.read("connected", timeout=args.players / 20 + 60)
        if connected["clients"] != args.players:
            raise SetupError(f"loadgen.js: {connected['clients']} of {args.players} players connected")
        yield gen
    finally:
        gen.stop(wait=10)


def node_baseline_kb(cpu: int | None) -> int:
    """RSS of a node process with the load generator's modules loaded and no player."""
    code = "require('socket.io-client'); require('jsonwebtoken'); setTimeout(() => {}, 3000); console.log('up')"
    cmd = ["node", "-e", code]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    proc = subprocess.Popen(cmd, env=dict(os.environ, NODE_PATH=str(node_modules())), stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.5)
        return rss_kb([proc.pid])
    finally:
        proc.kill()
        proc.wait()


def run_node(args: argparse.Namespace, gw: Gateway, secret: str) -> dict[str, Any]:
    base_kb = node_baseline_kb(args.load_cpu)
    move_s = args.settle_s + args.seconds + 2
    with loadgen(args, gw, secret, move_s) as gen:
        log(f"Node: {args.players} players joined; settling {args.settle_s:g} s, measuring {args.seconds:g} s")
        time.sleep(args.settle_s)
        got = window(gen.proc.pid, gw.url, args.players, args.seconds, None)
        got["rss_kb_per_player"] = round((got.pop("rss_kb") - base_kb) / args.players, 1)
        done = gen.read("done", timeout=move_s + 30)
        got["failures"] = done["failed"] + done["ack_errors"] + done["seq_gaps"]
        return got


def run(args: argparse.Namespace) -> dict[str, Any]:
    pin = not args.no_pin
    if not pin:
        args.server_cpu = args.load_cpu = None
    check_tools(pin, (args.server_cpu, args.load_cpu) if pin else (0, 0))
    if not LOADGEN.exists() and not args.skip_node:
        raise SetupError(f"no loadgen.js at {LOADGEN}")
    raise_nofile((4 if args.together else 2) * args.players + 1024)
    secret = secrets.token_hex(24)
    run_dir = Path(tempfile.mkdtemp(prefix="gamegw-bench-swarm-"))
    gw = Gateway(free_port_block(1), secret, REPO / "configs" / "bench.toml", args.server_cpu, logdir=run_dir)
    try:
        gw.wait_ready()
        result: dict[str, Any] = {"players": args.players, "room_size": args.room_size, "move_rate": args.move_rate,
                                  "scenario": args.scenario, "seconds": args.seconds, "pinned": pin}
        if args.together:
            result.update(run_together(args, gw, secret, run_dir))
        else:
            result["locust"] = run_locust(args, gw, secret, run_dir)
        if not args.skip_node and not args.together and args.scenario == "steady":
            result["node"] = run_node(args, gw, secret)
    finally:
        gw.stop()
    shutil.rmtree(run_dir, ignore_errors=True)  # kept, with the logs, when the run failed
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=1000)
    ap.add_argument("--room-size", type=int, default=10)
    ap.add_argument("--move-rate", type=float, default=1.0, help="moves per second per player")
    ap.add_argument("--scenario", choices=("steady", "idle"), default="steady")
    ap.add_argument("--ticks", choices=("spread", "aligned"), default="spread",
                    help="spread: each player moves at a random phase of its period (gamectl's players by default; "
                         "loadgen.js through spread_ticks.js); aligned: every player in the same instant (loadgen.js "
                         "as shipped; Locust with --tick-phase aligned)")
    ap.add_argument("--spawn-rate", type=float, default=200.0, help="Locust players started per second")
    ap.add_argument("--settle-s", type=float, default=5.0, help="after every player joined, before measuring")
    ap.add_argument("--seconds", type=float, default=20.0, help="the measuring window")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--skip-node", action="store_true", help="measure Locust only")
    ap.add_argument("--together", action="store_true", help="run both generators at once on the load CPU and "
                                                             "measure them over the same window (a busy machine)")
    ap.add_argument("--profile", help="py-spy's collapsed stacks of the Locust process over the window, to FILE")
    ap.add_argument("--native", action="store_true", help="--profile: C frames too (py-spy then pauses the "
                                                          "process for each sample, which costs it CPU)")
    args = ap.parse_args()
    if args.together and (args.skip_node or args.scenario != "steady" or args.profile):
        ap.error("--together runs the steady scenario with both generators, without --profile")
    if args.players < 1 or args.room_size < 1 or args.seconds <= 0 or args.spawn_rate <= 0:
        ap.error("--players, --room-size, --seconds and --spawn-rate must be positive")
    code, result = run_and_report(NAME, run, args)
    if result is not None:
        rows: list[tuple[str, object]] = []
        lo, node = result["locust"], result.get("node")
        for key in ("cpu_us_per_s_per_player", "rss_kb_per_player", "deliveries_per_s_per_player", "cpu_cores",
                    "system_cpu_share", "failures"):
            if key not in lo:  # --together has no split of the CPU
                continue
            ratio = f"  ({lo[key] / node[key]:.2f}x)" if node and node[key] and key != "failures" else ""
            rows.append((key, f"locust {lo[key]}" + (f"   node {node[key]}{ratio}" if node else "")))
        print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
