#!/usr/bin/env python3
"""Idle connections: N players (default 10,000) connect to a fresh gateway over websocket and
then do nothing; reports the gateway's RSS before and after (KB per connection) and its CPU
use while the connections sit idle (Engine.IO heartbeats only) over a fixed window.

The gateway (configs/bench.toml, a random per-run key) is pinned to CPU 0 and the official
socket.io-client (loadtests/node/clients.js, one process, connects in batches) to CPU 1. The
open-file limit is raised for both (each side needs one descriptor per connection); the
heartbeat interval the gateway announces is in the output, since it sets the idle CPU cost.

The same hold is measured against the Node reference server (peer-bench's
``reference_server.js``, socket.io 4) in the same invocation, both on the same heartbeat
(``--ping-ms`` / ``--ping-timeout-ms``, 10 s / 5 s as the gateway's default), so that the figures
are ratios too (``--servers`` picks). Past ~25,000 connections one source address runs out of
ports: the clients then connect from 127.0.0.2, 127.0.0.3, ... (``--local-addresses``).

A process holds one descriptor per connection, and this machine caps every process at 20,000
(a hard limit that root cannot raise here). ``--processes P`` holds more: P server processes
behind the one port, over a redis-server of the run's own (``gamectl serve --workers P``; Node
in a cluster of P, ``loadtests/node/reference_cluster.js``, with the Redis adapter, as Node runs
several processes), and P client processes. The figures are then for the whole process tree.

Prints one JSON line (a row per server), then a table with Node's figures beside the gateway's. Exits 1
with a one-line message on a setup failure.

Example:
  .venv/bin/python loadtests/bench_idle.py --clients 10000 --idle-seconds 10
  .venv/bin/python loadtests/bench_idle.py --clients 50000 --processes 3 --idle-seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchlib import (
    CONNECTIONS,
    HERE,
    REPO,
    SERVER_RSS,
    Figure,
    Gateway,
    NodeProc,
    RedisProcess,
    SetupError,
    beside,
    check_tools,
    cpu_ms,
    node_modules,
    raise_nofile,
    rss_kb,
    run_and_report,
    server_options,
    side_by_side,
    start_server,
)

NODE_HELPER = HERE / "node" / "clients.js"
NAME = "bench_idle"




def server_connections(url: str) -> int | None:
    """The gateway's own count of live connections (gamegw_connections in /metrics)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^gamegw_connections(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return int(float(m.group(1))) if m else None


def run(args: argparse.Namespace) -> dict:
    """Every server of ``--servers`` in turn, on the same hold: ``{"servers": [row, ...]}``."""
    pin = not args.no_pin
    check_tools(pin, (args.server_cpu, args.load_cpu))
    node_modules()
    per_process = -(-args.clients // args.processes)
    nofile = raise_nofile(per_process + 1024)
    if nofile < per_process + 256:
        raise SetupError(f"open-file limit {nofile} is too low for {per_process} connections per process "
                         f"(raise ulimit -n, or use more --processes)")
    if pin:
        os.sched_setaffinity(0, {args.load_cpu})  # keep this harness off the server's CPU
    redis = RedisProcess(args.load_cpu if pin else None) if args.processes > 1 else None
    rows = []
    try:
        for name in args.servers:
            rows.append({"server": name, **hold(name, args, pin, nofile, redis)})
    finally:
        if redis is not None:
            redis.stop()
    return {"bench": "idle", "servers": rows}


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` as even as can be (the first ones take the remainder)."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def hold(name: str, args: argparse.Namespace, pin: bool, nofile: int, redis: RedisProcess | None) -> dict:
    """Hold ``args.clients`` idle connections on one server (``gamegw`` or ``node``); its figures."""
    secret = secrets.token_urlsafe(48)
    gw: Gateway | None = None
    clients: list[NodeProc] = []
    try:
        gw = start_server(name, secret, args.config, args.server_cpu if pin else None, ping_ms=args.ping_ms,
                          ping_timeout_ms=args.ping_timeout_ms, processes=args.processes,
                          redis=redis.url if redis is not None else None)
        time.sleep(args.settle)
        rss0 = rss_kb(gw.pids())
        prefix = f"idle-{secrets.token_hex(3)}"
        for k, count in enumerate(shares(args.clients, args.processes)):
            opts = {"mode": "idle", "urls": [gw.url], "clients": count, "batch": args.batch,
                    "transport": "websocket", "connect_timeout_ms": int(args.connect_timeout * 1000),
                    "hold_max_s": args.max_seconds, "user_prefix": f"{prefix}-{k}",
                    "local_addresses": args.local_addresses}
            clients.append(NodeProc(NODE_HELPER, [json.dumps(opts)], secret, args.load_cpu if pin else None))
        for client in clients:
            client.read("ready", 60)
        t_connect = time.monotonic()
        wait = max(1.0, args.max_seconds - args.idle_seconds - 2 * args.settle - 5)
        got = merged([client.read("connected", wait) for client in clients])
        connect_total_s = time.monotonic() - t_connect
        if got["connected"] == 0:
            raise SetupError(f"no connection succeeded: {got['errors']} (log {gw.log})")
        time.sleep(args.settle)  # let the last handshakes and session events finish
        # with several workers, /metrics is one worker's
        seen = server_connections(gw.url) if name != "node" and args.processes == 1 else None
        pids = gw.pids()
        rss1 = rss_kb(pids)
        cpu0, t0 = cpu_ms(pids), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, t1 = cpu_ms(pids), time.monotonic()
        rss2 = rss_kb(pids)
        for client in clients:
            client.send("close")
        done = merged([client.read("done", 60) for client in clients])
        n = got["connected"]
        idle_cpu_pct = (cpu1 - cpu0) / 1000 / (t1 - t0) * 100
        return {
            "clients": args.clients, "connected": n, "failures": got["failed"],
            "errors": got["errors"], "server_connections": seen, "connect_s": round(got["wall_ms"] / 1000, 2),
            "connect_total_s": round(connect_total_s, 2), "batch": args.batch,
            "batch_ms_first": got.get("batch_ms_first"), "batch_ms_last": got.get("batch_ms_last"),
            "server_rss_before_kb": rss0, "server_rss_after_kb": rss1, "server_rss_end_kb": rss2,
            "kb_per_connection": round((rss1 - rss0) / max(1, n), 2),
            "idle_seconds": round(t1 - t0, 2), "server_idle_cpu_ms": round(cpu1 - cpu0, 1),
            "server_idle_cpu_pct": round(idle_cpu_pct, 2),
            "server_idle_cpu_us_per_connection_s": round((cpu1 - cpu0) * 1000 / max(1, n) / (t1 - t0), 3),
            "dropped_while_idle": done["dropped_while_idle"], "drop_reasons": done["drop_reasons"],
            "heartbeat": got.get("heartbeat"), "client_rss_mb": done["client_rss_mb"],
            "nofile_limit": nofile, "pinned": pin, "processes": args.processes,
        }
    finally:
        for client in clients:
            client.send("close")
            client.stop()
        if gw:
            gw.stop()


def merged(reports: list[dict]) -> dict:
    """The client processes' reports as one: counts and error tallies added, the first batch's
    figures, the heartbeat (the same for all)."""
    out = dict(reports[0])
    for key in ("connected", "failed", "dropped_while_idle", "client_rss_mb"):
        if key in out:
            out[key] = sum(r[key] for r in reports)
    for key in ("errors", "drop_reasons"):
        if key in out:
            out[key] = dict(sum((Counter(r[key]) for r in reports), Counter()))
    if "wall_ms" in out:
        out["wall_ms"] = max(r["wall_ms"] for r in reports)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000, help="idle connections to hold (default 10000)")
    ap.add_argument("--batch", type=int, default=200,
                    help="connects per batch, one batch after another (default 200)")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="CPU measurement window while idle (default 10)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait after start-up and after the last connect before reading (default 2)")
    ap.add_argument("--connect-timeout", type=float, default=20.0, help="seconds before a connect counts as failed")
    ap.add_argument("--max-seconds", type=float, default=170.0, help="hard stop for the whole run (default 170)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench.toml", help="gateway config")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU the gateway is pinned to (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU the clients are pinned to (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything with taskset")
    server_options(ap)
    ap.add_argument("--processes", type=int, default=1,
                    help="server processes behind the port and client processes (default 1); more than one "
                         "runs both servers over a redis-server of the run's own, for holds past one process's "
                         "open-file limit")
    ap.add_argument("--local-addresses", type=int, default=None,
                    help="connect from this many addresses 127.0.0.2... (default: 1 per 20,000 clients past the "
                         "first 20,000; 0: the system's choice)")
    args = ap.parse_args()
    if args.local_addresses is None:
        args.local_addresses = 0 if args.clients <= 20000 else -(-args.clients // 20000)
    if args.clients < 1 or args.batch < 1 or args.idle_seconds <= 0 or args.processes < 1:
        ap.error("--clients, --batch, --idle-seconds and --processes must be positive")
    if args.max_seconds < args.idle_seconds + 2 * args.settle + 15:
        ap.error("--max-seconds leaves no time to connect")
    code, result = run_and_report(NAME, run, args)
    if result is None:
        return code
    print(side_by_side(result["servers"], FIGURES))
    return 0


FIGURES: list[Figure] = [  # the table's lines
    CONNECTIONS,
    ("connect time, s", lambda r, n: f"{r['connect_s']}"),
    SERVER_RSS,
    ("KB per connection", beside("kb_per_connection")),
    ("idle CPU, % of a core", beside("server_idle_cpu_pct")),
    ("µs per connection-second", beside("server_idle_cpu_us_per_connection_s")),
    ("dropped while idle", lambda r, n: f"{r['dropped_while_idle']}"),
]


if __name__ == "__main__":
    sys.exit(main())
