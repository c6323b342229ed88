#!/usr/bin/env python3
"""How `gamectl serve --workers N` scales: peer-bench's moving case (the official
socket.io-client, players in rooms of R, each sending `move` at a fixed rate) against one
worker with P players, then against two workers with 2P players (the same load per worker).
Both runs are in cluster mode over a redis-server of the run's own (a single worker is
`serve --redis` without --workers), so the only difference is the second worker.

The load is offered at a fixed rate, so the deliveries a second equal the offered load as long
as the gateway keeps up: "scales" means the delivery ratio stays 1 and the RTT stays low with
twice the players, and the CPU share shows the headroom left. Reports per run the deliveries a
second (the throughput), delivery ratio, move RTT p50/p99,
the server CPU (the parent and its workers, and redis-server apart) as a share of one core and
per thousand deliveries, and the load generator's CPU share; then the scaling factor
(deliveries/s with 2 workers over 1 worker; 2.0 is perfect).

Pinning: by default nothing is pinned, since two workers need two cores and a 2-core machine
has no third for the load generator: read `loadgen_cpu_share` (near 1.0 means the generator,
not the gateway, was the limit). On a bigger machine pin them apart, e.g.
`--server-cpus 0,1 --load-cpus 2,3`.

Prints one JSON line (both runs and the factor), then a table. Exits 1 with a one-line message
on a setup failure.

Examples:
  .venv/bin/python loadtests/bench_workers.py                                  # 1000 then 2000 players, ~1.5 min
  .venv/bin/python loadtests/bench_workers.py --players 50 --seconds 3         # a check that it works
  .venv/bin/python loadtests/bench_workers.py --server-cpus 0,1 --load-cpus 2,3
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import (
    REPO,
    Gateway,
    NodeProc,
    RedisProcess,
    SetupError,
    check_tools,
    cpu_ms,
    free_port_block,
    node_modules,
    raise_nofile,
    run_and_report,
    tree,
)

LOADGEN = Path(__file__).resolve().parent / "peer-bench" / "node" / "loadgen.js"
NAME = "bench_workers"


def one_run(args: argparse.Namespace, workers: int, players: int, redis: RedisProcess) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    prefix = f"gamegw-bench-{secrets.token_hex(4)}"
    extra = ("--workers", str(workers)) if workers > 1 else ()
    gateway = Gateway(free_port_block(1), secret, args.config, args.server_cpus, redis=redis.url, prefix=prefix,
                      extra=extra)
    gen = None
    try:
        gateway.wait_ready()
        time.sleep(1.0 + workers)  # every worker ready, not only the one that answered /readyz
        if workers > 1 and len(gateway.pids()) < workers + 1:
            raise SetupError(f"expected {workers} workers under the parent, found {gateway.pids()} "
                             f"(log {gateway.log})")
        gen = NodeProc(args.loadgen, [gateway.url, str(players), str(args.room_size), f"{args.rate:g}",
                                      f"{args.seconds:g}"], secret, args.load_cpus,
                       {"BENCH_TRANSPORT": args.transport})
        connected = gen.read("connected", args.connect_timeout)
        if connected["clients"] == 0:
            raise SetupError(f"no player could connect to {workers} worker(s) (log {gateway.log})")
        time.sleep(0.5)
        pids, load_pids = gateway.pids(), tree(gen.proc.pid)
        cpu0, redis0, load0 = cpu_ms(pids), cpu_ms([redis.proc.pid]), cpu_ms(load_pids)
        t0 = time.monotonic()
        done = gen.read("done", args.seconds + 60)
        t1 = time.monotonic()
        cpu, redis_cpu, load = cpu_ms(pids) - cpu0, cpu_ms([redis.proc.pid]) - redis0, cpu_ms(load_pids) - load0
        gen.stop(10)
        wall_ms = (t1 - t0) * 1000
        return {
            "workers": workers, "players": connected["clients"], "connect_failures": connected["failed"],
            "offered_moves_per_s": round(args.rate * players, 1),
            "deliveries": done["delivered"], "expected": done["expected"], "delivery_ratio": done["delivery_ratio"],
            "deliveries_per_s": round(done["delivered"] / (t1 - t0), 1), "seq_gaps": done["seq_gaps"],
            "rtt_p50_ms": done["rtt_p50_ms"], "rtt_p99_ms": done["rtt_p99_ms"],
            "server_cpu_share": round(cpu / wall_ms, 2),
            "cpu_ms_per_1k_deliveries": round(cpu * 1000 / max(1, done["delivered"]), 2),
            "redis_cpu_share": round(redis_cpu / wall_ms, 2), "loadgen_cpu_share": round(load / wall_ms, 2),
        }
    finally:
        if gen:
            gen.stop(0.1)
        gateway.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_tools(False, (0, 0))  # node
    if (args.server_cpus or args.load_cpus) and not shutil.which("taskset"):
        raise SetupError("taskset is not on PATH (or leave --server-cpus / --load-cpus out)")
    node_modules()
    if not args.loadgen.is_file():
        raise SetupError(f"load generator not found: {args.loadgen} (pass --loadgen)")
    raise_nofile(2 * args.players + 1024)
    redis = RedisProcess()
    try:
        runs = []
        for workers in (1, 2):
            players = args.players * workers
            print(f"{NAME}: {workers} worker(s), {players} players ...", file=sys.stderr, flush=True)
            runs.append(one_run(args, workers, players, redis))
    finally:
        redis.stop()
    one, two = runs
    return {
        "bench": "workers", "transport": args.transport, "room_size": args.room_size,
        "rate_per_player": args.rate, "seconds": args.seconds,
        "pinned": {"server": args.server_cpus, "load": args.load_cpus}, "runs": runs,
        "scaling": round(two["deliveries_per_s"] / one["deliveries_per_s"], 2) if one["deliveries_per_s"] else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=1000, help="players per worker (default 1000)")
    ap.add_argument("--room-size", type=int, default=10, help="players per room (default 10)")
    ap.add_argument("--rate", type=float, default=2.0, help="moves per second per player (default 2)")
    ap.add_argument("--seconds", type=float, default=15.0, help="sending time per run (default 15)")
    ap.add_argument("--transport", choices=["websocket", "polling"], default="websocket",
                    help="how players connect: websocket, or long-polling first then the upgrade (default websocket)")
    ap.add_argument("--connect-timeout", type=float, default=90.0, help="for every player to connect (default 90)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench.toml", help="gateway config")
    ap.add_argument("--loadgen", type=Path, default=LOADGEN, help="load generator (default loadtests/peer-bench)")
    ap.add_argument("--server-cpus", help="pin the gateway (parent and workers) to these CPUs, as taskset -c takes")
    ap.add_argument("--load-cpus", help="pin the load generator to these CPUs")
    args = ap.parse_args()
    if args.players < 1 or args.room_size < 1 or args.seconds <= 0 or args.rate <= 0:
        ap.error("--players, --room-size, --rate and --seconds must be positive")
    code, res = run_and_report(NAME, run, args)
    if res is None:
        return code
    print(f"{'workers':>7} {'players':>7} {'deliveries/s':>12} {'delivery':>8} {'rtt p50':>7} {'rtt p99':>7} "
          f"{'server cpu':>10} {'cpu ms/1k':>9} {'redis cpu':>9} {'load cpu':>8}")
    for r in res["runs"]:
        print(f"{r['workers']:>7} {r['players']:>7} {r['deliveries_per_s']:>12} {r['delivery_ratio']!s:>8} "
              f"{r['rtt_p50_ms']!s:>7} {r['rtt_p99_ms']!s:>7} {r['server_cpu_share']:>10} "
              f"{r['cpu_ms_per_1k_deliveries']:>9} {r['redis_cpu_share']:>9} {r['loadgen_cpu_share']:>8}")
    print(f"\nthroughput, 2 workers over 1 (twice the players): {res['scaling']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
