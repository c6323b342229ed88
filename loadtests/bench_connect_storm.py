#!/usr/bin/env python3
"""Connect storm: N players open /game connections as fast as they can, each with its own
HS256 JWT, against a fresh gateway; reports connections/s, connect latency, failures and the
CPU time the gateway spent accepting them (JWT check, registry, `session` event).

The gateway (configs/bench.toml, a random per-run key) is pinned to CPU 0 and the official
socket.io-client (loadtests/node/clients.js) to CPU 1, so the CPU figure is the server's own.
Tokens are minted before the clock starts. Every connection stays open until the storm is
over, so at the end the gateway holds N live connections.

The same storm is run against the Node reference server (peer-bench's ``reference_server.js``,
socket.io 4) in the same invocation, both on the same heartbeat (``--servers``, ``--ping-ms``),
so that the figures are ratios too.

Prints one JSON line (a row per server), then a table with Node's figures beside the gateway's.
Exits 1 with a one-line message on a setup failure.

Example:
  .venv/bin/python loadtests/bench_connect_storm.py --clients 2000 --concurrency 200
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

from benchlib import (
    CONNECTIONS,
    HERE,
    REPO,
    SERVER_RSS,
    Figure,
    Gateway,
    NodeProc,
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
    tree,
)

NODE_HELPER = HERE / "node" / "clients.js"
NAME = "bench_connect_storm"




def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (whole machine)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=False)).get("ListenOverflows", 0))
    return None


def run(args: argparse.Namespace) -> dict:
    """Every server of ``--servers`` in turn, on the same storm: ``{"servers": [row, ...]}``."""
    pin = not args.no_pin
    check_tools(pin, (args.server_cpu, args.load_cpu))
    node_modules()
    nofile = raise_nofile(args.clients + 1024)
    if nofile < args.clients + 256:
        raise SetupError(f"open-file limit {nofile} is too low for {args.clients} connections (raise ulimit -n)")
    if pin:
        os.sched_setaffinity(0, {args.load_cpu})  # keep this harness off the server's CPU
    rows = [{"server": name, **storm(name, args, pin)} for name in args.servers]
    return {"bench": "connect_storm", "servers": rows}


def storm(name: str, args: argparse.Namespace, pin: bool) -> dict:
    secret = secrets.token_urlsafe(48)
    gw: Gateway | None = None
    node = None
    try:
        gw = start_server(name, secret, args.config, args.server_cpu if pin else None, ping_ms=args.ping_ms,
                          ping_timeout_ms=args.ping_timeout_ms)
        time.sleep(1.0)  # let start-up work settle before the first reading
        opts = {"mode": "storm", "urls": [gw.url], "clients": args.clients, "concurrency": args.concurrency,
                "transport": args.transport, "connect_timeout_ms": int(args.connect_timeout * 1000),
                "hold_max_s": args.max_seconds, "user_prefix": f"storm-{secrets.token_hex(3)}"}
        node = NodeProc(NODE_HELPER, [json.dumps(opts)], secret, args.load_cpu if pin else None)
        mint_ms = node.read("ready", 60)["mint_ms"]
        pids, load_pids = gw.pids(), tree(node.proc.pid)
        rss0, cpu0, load0, lo0 = rss_kb(pids), cpu_ms(pids), cpu_ms(load_pids), listen_overflows()
        node.send("go")
        got = node.read("connected", args.max_seconds)
        pids = gw.pids()
        cpu1, rss1, load1, lo1 = cpu_ms(pids), rss_kb(pids), cpu_ms(load_pids), listen_overflows()
        node.send("close")
        node.read("done", 30)
        if got["connected"] == 0:
            raise SetupError(f"no connection succeeded: {got['errors']} (log {gw.log})")
        wall_s = got["wall_ms"] / 1000
        cpu_s = (cpu1 - cpu0) / 1000
        return {
            "clients": args.clients, "concurrency": args.concurrency,
            "transport": args.transport, "connected": got["connected"], "failures": got["failed"],
            "errors": got["errors"], "wall_s": round(wall_s, 3), "connections_per_s": got["connects_per_s"],
            "connect_p50_ms": got["connect_p50_ms"], "connect_p90_ms": got["connect_p90_ms"],
            "connect_p99_ms": got["connect_p99_ms"], "connect_max_ms": got["connect_max_ms"],
            "session_p99_ms": got["session_p99_ms"],
            "listen_queue_overflows": lo1 - lo0 if lo0 is not None and lo1 is not None else None,
            "server_cpu_s": round(cpu_s, 3),
            "server_cpu_ms_per_connection": round(cpu_s * 1000 / max(1, got["connected"]), 3),
            "server_cpu_share": round(cpu_s / max(wall_s, 1e-9), 2),
            "client_cpu_share": round((load1 - load0) / 1000 / max(wall_s, 1e-9), 2),
            "server_rss_before_kb": rss0, "server_rss_after_kb": rss1,
            "client_token_mint_ms": mint_ms, "pinned": pin,
        }
    finally:
        if node:
            node.send("close")
            node.stop()
        if gw:
            gw.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=2000, help="connections to open (default 2000)")
    ap.add_argument("--concurrency", type=int, default=200,
                    help="connects in flight at once; 0 = all at once (default 200)")
    ap.add_argument("--transport", choices=["websocket", "polling"], default="websocket",
                    help="websocket only, or long-polling then upgrade (default websocket)")
    ap.add_argument("--connect-timeout", type=float, default=20.0, help="seconds before a connect counts as failed")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="hard stop for the whole storm (default 120)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench.toml", help="gateway config")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU the gateway is pinned to (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU the clients are pinned to (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything with taskset")
    server_options(ap)
    args = ap.parse_args()
    if args.clients < 1 or args.concurrency < 0:
        ap.error("--clients must be >= 1 and --concurrency >= 0")
    code, result = run_and_report(NAME, run, args)
    if result is None:
        return code
    print(side_by_side(result["servers"], FIGURES))
    return 0


FIGURES: list[Figure] = [  # the table's lines
    CONNECTIONS,
    ("concurrency", lambda r, n: f"{r['concurrency'] or 'all at once'}"),
    ("wall time, s", lambda r, n: f"{r['wall_s']}"),
    ("connections/s", beside("connections_per_s")),
    ("connect p50, ms", beside("connect_p50_ms")),
    ("connect p99, ms", beside("connect_p99_ms")),
    ("listen queue overflows", lambda r, n: f"{r['listen_queue_overflows']}"),
    ("server CPU ms / connection", beside("server_cpu_ms_per_connection")),
    ("server CPU, share of a core", lambda r, n: f"{r['server_cpu_share']:.0%}"),
    SERVER_RSS,
]


if __name__ == "__main__":
    sys.exit(main())
