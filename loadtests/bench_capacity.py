#!/usr/bin/env python3
"""Capacity sweep: the peer-bench load (loadtests/peer-bench/node/loadgen.js, the official
socket.io-client: P players in rooms of R, each sending `move` at a fixed rate) at a series of
per-player rates, each against fresh gateways; reports per rate the delivery ratio, move RTT
p50/p99 and the gateways' CPU per thousand deliveries, then the highest total move rate at
which every move still reaches every member (delivery ratio >= --min-delivery) with RTT p99
under --max-p99-ms, this rate and every lower one included.

Gateways (configs/bench.toml, a random per-run key) are pinned to CPU 0 and the load
generator to CPU 1. With --instances 2 --redis URL, two gateways share one Redis on
consecutive ports and players alternate between them, so every room spans both; each rate
uses its own key prefix in Redis (GAMEGW_REDIS_PREFIX), deleted afterwards, so nothing else in
that database is touched.

Prints one JSON line (every rate and the verdict), then a table. Exits 1 with a one-line
message on a setup failure.

Examples:
  .venv/bin/python loadtests/bench_capacity.py
  .venv/bin/python loadtests/bench_capacity.py --rates 1,2 --seconds 5
  .venv/bin/python loadtests/bench_capacity.py --instances 2     # a redis-server of its own
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
import urllib.parse
import urllib.request
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
    rss_kb,
    run_and_report,
    tree,
)

LOADGEN = Path(__file__).resolve().parent / "peer-bench" / "node" / "loadgen.js"  # the copy of ../shared/peer-bench
NAME = "bench_capacity"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")




def redis_client(url: str) -> Any:
    try:
        import redis  # only cluster runs need it
    except ImportError:
        raise SetupError("--redis needs the redis package (it comes with the gateway: use .venv/bin/python)") from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.ping()
    except (redis.RedisError, ValueError) as e:
        raise SetupError(f"Redis at {url} is not reachable: {e}") from None
    return client


def drop_prefix(client: Any, prefix: str) -> int:
    """Delete every key this run's gateways made (and only those)."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            n += client.delete(*batch)
            batch = []
    if batch:
        n += client.delete(*batch)
    return n


def one_rate(args: argparse.Namespace, rate: float, rdb: Any) -> dict:
    pin = not args.no_pin
    secret = secrets.token_urlsafe(48)
    prefix = f"gamegw-bench-{secrets.token_hex(4)}" if args.redis else None
    base = free_port_block(args.instances)
    gateways: list[Gateway] = []
    gen = None
    try:
        for k in range(args.instances):
            gateways.append(Gateway(base + k, secret, args.config, args.server_cpu if pin else None,
                                    redis=args.redis, prefix=prefix))
        for gw in gateways:
            gw.wait_ready()
        time.sleep(1.0)
        urls = ",".join(gw.url for gw in gateways)
        env = {"BENCH_TRANSPORT": args.transport}
        gen = NodeProc(args.loadgen, [urls, str(args.clients), str(args.room_size), f"{rate:g}", f"{args.seconds:g}"],
                       secret, args.load_cpu if pin else None, env)
        connected = gen.read("connected", args.connect_timeout)
        if connected["clients"] == 0:
            raise SetupError(f"no player could connect at rate {rate:g} (log {gateways[0].log})")
        time.sleep(0.5)
        pids, load_pids = [p for gw in gateways for p in gw.pids()], tree(gen.proc.pid)
        cpu0, rss0, load0 = cpu_ms(pids), rss_kb(pids), cpu_ms(load_pids)
        t0 = time.monotonic()
        done = gen.read("done", args.seconds + 60)
        cpu1, t1, load1 = cpu_ms(pids), time.monotonic(), cpu_ms(load_pids)
        gen.stop(10)
        cpu = cpu1 - cpu0
        n = connected["clients"]
        row = {
            "rate_per_player": rate, "players": n, "connect_failures": connected["failed"],
            "offered_moves_per_s": round(rate * n, 1),
            "offered_deliveries_per_s": round(rate * n * min(args.room_size, n), 1),
            "sent_moves_per_s": round(done["sent"] / args.seconds, 1),
            "moves_sent": done["sent"], "moves_acked": done["acked"], "ack_errors": done["ack_errors"],
            "deliveries": done["delivered"], "expected": done["expected"], "delivery_ratio": done["delivery_ratio"],
            "deliveries_per_s": round(done["delivered"] / (t1 - t0), 1), "seq_gaps": done["seq_gaps"],
            "rtt_p50_ms": done["rtt_p50_ms"], "rtt_p99_ms": done["rtt_p99_ms"], "rtt_samples": done["rtt_samples"],
            "cpu_ms_per_1k_deliveries": round(cpu * 1000 / max(1, done["delivered"]), 2),
            "server_cpu_share": round(cpu / ((t1 - t0) * 1000), 2), "server_rss_kb": rss0,
            "loadgen_cpu_share": round((load1 - load0) / ((t1 - t0) * 1000), 2),
            "connect_p99_ms": done["connect_p99_ms"],
        }
        row["ok"] = bool(
            n == args.clients and row["delivery_ratio"] is not None and row["delivery_ratio"] >= args.min_delivery
            and row["rtt_p99_ms"] is not None and row["rtt_p99_ms"] < args.max_p99_ms
        )
        return row
    finally:
        if gen:
            gen.stop(0.1)
        for gw in gateways:
            gw.stop()
        if rdb is not None and prefix:
            try:
                drop_prefix(rdb, prefix)
            except Exception as e:  # cleanup only: say so, keep the figures
                print(f"{NAME}: could not delete Redis keys {prefix}:* ({e})", file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    pin = not args.no_pin
    check_tools(pin, (args.server_cpu, args.load_cpu))
    node_modules()
    if not args.loadgen.is_file():
        raise SetupError(f"load generator not found: {args.loadgen} (pass --loadgen)")
    raise_nofile(args.clients + 1024)
    own_redis = None
    if args.instances > 1 and not args.redis:  # a Redis of the run's own: never one it did not start
        own_redis = RedisProcess(args.server_cpu if pin else None)
        args.redis = own_redis.url
    try:
        return sweep(args, pin)
    finally:
        if own_redis is not None:
            own_redis.stop()


def sweep(args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    rdb = redis_client(args.redis) if args.redis else None
    if pin:
        os.sched_setaffinity(0, {args.load_cpu})  # keep this harness off the servers' CPU
    rows = []
    for rate in args.rates:
        print(f"{NAME}: rate {rate:g}/s per player ({rate * args.clients:g} moves/s offered) ...",
              file=sys.stderr, flush=True)
        row = one_rate(args, rate, rdb)
        print(f"{NAME}:   delivery {row['delivery_ratio']}, rtt p99 {row['rtt_p99_ms']} ms, "
              f"{row['cpu_ms_per_1k_deliveries']} ms CPU per 1k deliveries", file=sys.stderr, flush=True)
        rows.append(row)
    best = full = None
    for row in rows:  # rates ascending: the verdict is the last rate before the first failure
        if not row["ok"]:
            break
        best = row
    for row in rows:  # the same, on delivery alone (RTT aside)
        if row["players"] != args.clients or (row["delivery_ratio"] or 0) < args.min_delivery:
            break
        full = row
    return {
        "bench": "capacity", "instances": args.instances, "redis": bool(args.redis), "players": args.clients,
        "room_size": args.room_size, "seconds": args.seconds, "transport": args.transport,
        "criteria": {"min_delivery": args.min_delivery, "max_p99_ms": args.max_p99_ms},
        "max_ok_rate_per_player": best["rate_per_player"] if best else None,
        "max_ok_moves_per_s": best["offered_moves_per_s"] if best else None,
        "max_ok_deliveries_per_s": best["offered_deliveries_per_s"] if best else None,
        "max_full_delivery_moves_per_s": full["offered_moves_per_s"] if full else None,
        "rates": rows, "pinned": pin,
    }


def parse_rates(text: str) -> list[float]:
    try:
        rates = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not rates or rates[0] <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=parse_rates, default=parse_rates("0.5,1,2,4,8"),
                    help="moves per second per player, comma-separated (default 0.5,1,2,4,8)")
    ap.add_argument("--clients", type=int, default=1000, help="players (default 1000)")
    ap.add_argument("--room-size", type=int, default=10, help="players per room (default 10)")
    ap.add_argument("--seconds", type=float, default=10.0, help="sending time per rate (default 10)")
    ap.add_argument("--instances", type=int, default=1, help="gateways on consecutive ports (default 1)")
    ap.add_argument("--redis", help="Redis URL for cluster mode (default with --instances > 1: a redis-server "
                                    "of the run's own on a free port)")
    ap.add_argument("--transport", choices=["websocket", "polling"], default="websocket",
                    help="websocket only, or long-polling then upgrade (default websocket)")
    ap.add_argument("--min-delivery", type=float, default=1.0, help="delivery ratio a rate must reach (default 1.0)")
    ap.add_argument("--max-p99-ms", type=float, default=100.0, help="RTT p99 a rate must stay under (default 100)")
    ap.add_argument("--connect-timeout", type=float, default=90.0,
                    help="seconds for all players to connect and join (default 90)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench.toml", help="gateway config")
    ap.add_argument("--loadgen", type=Path, default=LOADGEN, help="load generator (default loadtests/peer-bench)")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU the gateways are pinned to (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU the load generator is pinned to (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything with taskset")
    args = ap.parse_args()
    if args.clients < 1 or args.room_size < 1 or args.seconds <= 0 or args.instances < 1:
        ap.error("--clients, --room-size, --seconds and --instances must be positive")
    if args.redis:
        url = urllib.parse.urlsplit(args.redis)
        if url.scheme not in ("redis", "unix") or (url.scheme == "redis" and url.hostname not in LOCAL_HOSTS):
            ap.error("--redis must be a redis:// URL on this machine (redis://127.0.0.1:PORT/DB)")
    code, res = run_and_report(NAME, run, args)
    if res is None:
        return code
    head = f"{'rate/player':>11} {'moves/s':>8} {'delivery':>9} {'rtt p50':>9} {'rtt p99':>9} {'cpu ms/1k':>10} " \
           f"{'cpu share':>9} {'load cpu':>8}  ok"
    print(head)
    for r in res["rates"]:
        print(f"{r['rate_per_player']:>11g} {r['offered_moves_per_s']:>8g} {r['delivery_ratio']:>9} "
              f"{r['rtt_p50_ms']!s:>9} {r['rtt_p99_ms']!s:>9} {r['cpu_ms_per_1k_deliveries']:>10} "
              f"{r['server_cpu_share']:>9} {r['loadgen_cpu_share']:>8}  {'yes' if r['ok'] else 'no'}")
    crit = f"delivery >= {args.min_delivery:g}, rtt p99 < {args.max_p99_ms:g} ms"
    mode = f"{args.instances} instance(s)" + (" over Redis" if args.redis else "")
    if res["max_ok_moves_per_s"] is None:
        print(f"\n{mode}: no swept rate met {crit}")
    else:
        print(f"\n{mode}: highest rate meeting {crit}: {res['max_ok_moves_per_s']:g} moves/s "
              f"({res['max_ok_rate_per_player']:g}/s per player, {res['max_ok_deliveries_per_s']:g} deliveries/s)")
    if res["max_full_delivery_moves_per_s"] != res["max_ok_moves_per_s"]:
        full = res["max_full_delivery_moves_per_s"]
        print(f"{mode}: highest rate with delivery >= {args.min_delivery:g} (RTT aside): "
              + (f"{full:g} moves/s" if full is not None else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
