#!/usr/bin/env python3
"""Soak: N players (Locust, gamectl/players/locustfile.py) for M minutes across two gateways in
cluster mode over one Redis, then all of them dropped at once.

Two gateways (configs/bench.toml, a random per-run key, a per-run Redis key prefix deleted
afterwards) are pinned to one CPU and Locust (one process, or a master and --workers workers)
to the other. Players alternate between the gateways (`--hosts`), so every room of
--room-size consecutive players spans both; each moves --move-rate times a second at a random
phase.

The timeline: Locust starts and connects every player (the ramp, spawned at --spawn-rate);
the soak's minute 1 starts once the ramp's time is over; after --minutes minutes, with --drop
(the default), every player's connection is cut at the same moment (no close frame, no
DISCONNECT: `--drop-at`) and each one resumes at once with `auth.last_seq`; the run goes on for
--recovery-s seconds more.

Measured:
* every --sample-s seconds: RSS and CPU of each gateway's process tree (/proc), Redis
  `used_memory` (INFO memory), the players' live figures (progress on stderr);
* memory drift: each gateway's RSS at the end of minute 1 (warm) and just before the drop,
  in KB and in KB per player (on that gateway) per minute; Redis's the same way;
* per minute of the soak: exact count, failures, p50/p99/max of the move ack round trip and of
  the broadcast latency (send until each member receives the `move`), from the locustfile's
  per-window records;
* the mass drop: players cut, how many resumed (`session` with resumed: true), the time from
  the drop until each one resumed (p50/p99 and the max: the time until all had resumed), resume
  failures, replayed moves, sequence gaps after the drop, and the gateways' own counters.

Prints one JSON line, then tables. Exits 1 with a one-line message on a setup failure.

Examples:
  .venv/bin/python loadtests/bench_soak.py --players 200 --minutes 2
  .venv/bin/python loadtests/bench_soak.py                       # 1000 players, 10 min (~11.5 min)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import (
    REPO,
    Gateway,
    RedisProcess,
    SetupError,
    cpu_ms,
    free_port_block,
    raise_nofile,
    rss_kb,
    run_and_report,
    table,
    tree,
)

from gamegw.gamectl.loadtest import LOCUSTFILE  # the players gamectl loadtest runs

NAME = "bench_soak"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
STARTUP_S = 5.0  # Locust's own start, before it spawns anyone
GATEWAYS = 2


def log(msg: str) -> None:
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


def redis_client(url: str) -> Any:
    try:
        import redis
    except ImportError:
        raise SetupError("the redis package is missing (it comes with the gateway: use .venv/bin/python)") from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=5)
        client.ping()
    except (redis.RedisError, ValueError) as e:
        raise SetupError(f"Redis at {url} is not reachable: {e}") from None
    return client


def redis_used(client: Any) -> int | None:
    try:
        return int(client.info("memory")["used_memory"])
    except Exception:
        return None


def count_prefix(client: Any, prefix: str) -> dict[str, int] | None:
    """This run's keys by kind (conn, sess, user, usess, room, inst, ...) and in all."""
    out: dict[str, int] = {"total": 0}
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            kind = key.decode(errors="replace")[len(prefix) + 1:].split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
            out["total"] += 1
    except Exception:
        return None
    return out


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


SERVER_COUNTERS = {
    "gamegw_connects_total": "connects", "gamegw_moves_total": "moves", "gamegw_deliveries_total": "deliveries",
    "gamegw_grace_expiries_total": "grace_expiries", "gamegw_replayed_moves_total": "replayed_moves",
    "gamegw_bus_probe_failures_total": "bus_probe_failures", "gamegw_listener_restarts_total": "listener_restarts",
    "gamegw_bad_packets_total": "bad_packets",
}
SERVER_LABELLED = {
    "gamegw_drops_total": "drops", "gamegw_resumes_total": "resumes", "gamegw_disconnects_total": "disconnects",
    "gamegw_refusals_total": "refusals", "gamegw_limit_hits_total": "limit_hits",
}


def scrape(url: str) -> dict[str, Any]:
    """The gateway's own counters that matter here (error acks by event and code included)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, Any] = {"connections": 0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gamegw_connections":
                out["connections"] = int(s.value)
            elif s.name in SERVER_COUNTERS:
                out[SERVER_COUNTERS[s.name]] = int(s.value)
            elif s.name in SERVER_LABELLED and s.labels and s.value:
                key = ",".join(str(v) for v in s.labels.values())
                out.setdefault(SERVER_LABELLED[s.name], {})[key] = int(s.value)
            elif s.name == "gamegw_acks_total" and s.labels.get("result") != "ok" and s.value:
                out.setdefault("error_acks", {})[f"{s.labels.get('event')}:{s.labels.get('result')}"] = int(s.value)
    return out


def scrape_all(gateways: list[Gateway]) -> list[dict[str, Any]]:
    out = []
    for gw in gateways:
        try:
            out.append(scrape(gw.url))
        except OSError as e:
            out.append({"error": str(e)})
    return out


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    """after - before, for the counters of scrape() (labelled ones too); zeros left out."""
    out: dict[str, Any] = {}
    for k, v in after.items():
        if isinstance(v, dict):
            d = {lk: lv - before.get(k, {}).get(lk, 0) for lk, lv in v.items()}
            d = {lk: lv for lk, lv in d.items() if lv}
            if d:
                out[k] = d
        elif isinstance(v, int) and k != "connections" and v - before.get(k, 0):
            out[k] = v - before.get(k, 0)
    return out


def code_version() -> dict[str, Any]:
    """The commit the gateways ran, and whether server/ or gamectl/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "server", "gamectl"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": None}
    return {"commit": head, "uncommitted": sorted(ln[3:] for ln in dirty if ln.strip())}


def log_problems(path: Path) -> dict[str, Any]:
    """What a gateway logged at warning level or above (bench.toml's level): tracebacks, the
    exceptions that ended them, and warning/error lines, each kind counted with its most common texts."""
    lines = path.read_text(errors="replace").splitlines()
    exc_re = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Timeout|Cancelled\w*)\b(:.*)?$")
    tracebacks = sum(1 for ln in lines if ln.startswith("Traceback (most recent call last)"))
    exceptions: dict[str, int] = {}
    logged: dict[str, int] = {}
    for ln in lines:
        if exc_re.match(ln):
            exceptions[ln[:160]] = exceptions.get(ln[:160], 0) + 1
        else:
            parts = ln.split(" ", 4)
            if len(parts) >= 4 and parts[2] in ("warning", "error", "critical", "WARNING", "ERROR", "CRITICAL"):
                # the text without its time, and without per-connection ids
                key = re.sub(r"\b(sid|to sid) \S+", r"\1 *", " ".join(parts[2:]))[:160]
                logged[key] = logged.get(key, 0) + 1

    def top(d: dict[str, int]) -> list[str]:
        return [f"{n}x {k}" for k, n in sorted(d.items(), key=lambda kv: -kv[1])[:4]]

    return {"tracebacks": tracebacks, "exceptions": top(exceptions), "logged": top(logged),
            "problem_lines": tracebacks + sum(logged.values())}


class Progress:
    """Follows the locustfile's progress file: the last live line, the window records, the final line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""
        self.last: dict[str, Any] = {}
        self.windows: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        # (t, moves acked ok, move events received: broadcast + replayed) of every live line
        self.history: list[tuple[float, int, int]] = []

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        self.pos += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        for raw in lines:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if "final" in line:
                self.final = line["final"]
            else:
                self.last = line
                names = line.get("names", {})
                ok = names.get("move", {}).get("count", 0) - names.get("move", {}).get("failures", 0)
                got = names.get("broadcast", {}).get("count", 0) + names.get("replayed", {}).get("count", 0)
                self.history.append((line.get("t", 0.0), ok, got))
                if "minute" in line:
                    self.windows.append(line["minute"])

    def delivery(self, t0: float, t1: float, per_move: float) -> float | None:
        """Move events received per move acked between t0 and t1 (Unix times), over the expected."""
        inside = [h for h in self.history if t0 <= h[0] <= t1]
        if len(inside) < 2 or inside[-1][1] == inside[0][1]:
            return None
        return round((inside[-1][2] - inside[0][2]) / ((inside[-1][1] - inside[0][1]) * per_move), 4)

    def name(self, name: str) -> dict[str, Any]:
        return self.last.get("names", {}).get(name, {}) if self.last else {}


class Locust:
    """The Locust process(es), each in its own process group, output to files in run_dir."""

    def __init__(self, args: argparse.Namespace, hosts: list[str], secret: str, run_dir: Path,
                 progress: Path, origin: float, drop_at: float, run_s: float, cpu: int | None) -> None:
        base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
        if cpu is not None:
            base = ["taskset", "-c", str(cpu), *base]
        run_id = f"soak{secrets.token_hex(3)}"
        lead = [*base, "--headless", "--only-summary", "-u", str(args.players), "-r", f"{args.spawn_rate:g}",
                "-t", f"{run_s:.0f}s", "--host", hosts[0], "--hosts", ",".join(hosts), "--stop-timeout", "5",
                "--loglevel", "WARNING", "--logfile", str(run_dir / "locust.log"),
                "--scenario", "steady", "--room-size", str(args.room_size), "--move-rate", f"{args.move_rate:g}",
                "--run-id", run_id, "--total-users", str(args.players), "--gw-config", str(args.config.resolve()),
                "--progress-file", str(progress), "--window-s", "60", "--window-origin", f"{origin:.3f}"]
        if drop_at:
            lead += ["--drop-at", f"{drop_at:.3f}", "--drop-reconnect-delay", f"{args.reconnect_jitter:g}"]
        workers: list[list[str]] = []
        if args.workers:
            port = free_port_block(1)
            lead += ["--master", "--expect-workers", str(args.workers), "--master-bind-host", "127.0.0.1",
                     "--master-bind-port", str(port)]
            workers = [[*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                        "--loglevel", "WARNING", "--logfile", str(run_dir / f"locust-worker-{i}.log")]
                       for i in range(args.workers)]
        env = dict(os.environ, GAMEGW_JWT_SECRET=secret, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
        env.pop("GAMEGW_CONFIG", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.out = run_dir / "locust.out"
        for i, cmd in enumerate([lead, *workers]):
            with open(run_dir / ("locust.out" if i == 0 else f"locust-worker-{i - 1}.out"), "wb") as out:
                self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                                   env=env, cwd=REPO, start_new_session=True))

    @property
    def lead(self) -> subprocess.Popen[bytes]:
        return self.procs[0]

    def pids(self) -> list[int]:
        return [p for proc in self.procs for p in tree(proc.pid)]

    def tail(self) -> str:
        try:
            lines = [ln for ln in self.out.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            for proc in self.procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + wait
            for proc in self.procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass


def percentiles(entry: dict[str, Any] | None) -> dict[str, Any]:
    if not entry:
        return {"count": 0, "failures": 0, "p50": None, "p99": None, "max": None}
    return {k: entry.get(k) for k in ("count", "failures", "p50", "p99", "max")}


def events_per_move(players: int, room_size: int) -> float:
    """Move events a move makes on average (the sender included): sum of room sizes squared / players."""
    sizes = [room_size] * (players // room_size) + ([players % room_size] if players % room_size else [])
    return sum(n * n for n in sizes) / players


def per_player_minute(kb: int, players: float, seconds: float) -> float | None:
    if players <= 0 or seconds <= 0:
        return None
    return round(kb / players / (seconds / 60), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    pin = not args.no_pin
    if pin:
        import shutil

        if not shutil.which("taskset"):
            raise SetupError("taskset is not on PATH (or pass --no-pin)")
        have = os.sched_getaffinity(0)
        for cpu in (args.server_cpu, args.load_cpu):
            if cpu not in have:
                raise SetupError(f"CPU {cpu} is not available here (have {sorted(have)}; pick others or --no-pin)")
    if importlib.util.find_spec("locust") is None:
        raise SetupError("Locust is not installed in this environment (pip install -e '.[load]')")
    limit = raise_nofile(args.players + 1024)
    if limit < args.players + 256:
        raise SetupError(f"the open-file limit is {limit}, below {args.players + 256}")
    own_redis = None if args.redis else RedisProcess(args.server_cpu if pin else None)
    redis_url = args.redis or own_redis.url  # type: ignore[union-attr]
    rdb = redis_client(redis_url)
    secret = secrets.token_urlsafe(48)
    prefix = f"gamegw-soak-{secrets.token_hex(4)}"
    run_dir = Path(tempfile.mkdtemp(prefix="gamegw-soak-"))
    progress_path = run_dir / "progress.jsonl"
    gateways: list[Gateway] = []
    locust: Locust | None = None
    log(f"run directory {run_dir} (gateway and Locust logs), Redis prefix {prefix}")
    try:
        base = free_port_block(GATEWAYS)
        for k in range(GATEWAYS):
            gateways.append(Gateway(base + k, secret, args.config, args.server_cpu if pin else None,
                                    redis=redis_url, prefix=prefix, logdir=run_dir))
        for gw in gateways:
            gw.wait_ready()
        if pin:
            os.sched_setaffinity(0, {args.load_cpu})  # keep this harness off the gateways' CPU
        gw_pids = [gw.pids() for gw in gateways]
        rss_idle = [rss_kb(p) for p in gw_pids]
        redis_idle = redis_used(rdb)

        launched = time.time()
        ramp_s = args.players / args.spawn_rate + args.ramp_margin
        origin = launched + STARTUP_S + ramp_s
        soak_s = args.minutes * 60
        drop_at = origin + soak_s if args.drop else 0.0
        end_at = origin + soak_s + (args.recovery_s if args.drop else 0.0)
        locust = Locust(args, [gw.url for gw in gateways], secret, run_dir, progress_path, origin, drop_at,
                        end_at - launched, args.load_cpu if pin else None)
        progress = Progress(progress_path)
        log(f"{args.players} players over {GATEWAYS} gateways ({', '.join(gw.url for gw in gateways)}), "
            f"rooms of {args.room_size}, {args.move_rate:g} moves/s each; ramp {STARTUP_S + ramp_s:.0f} s, soak "
            f"{args.minutes:g} min" + (f", mass drop, {args.recovery_s:g} s of recovery" if args.drop else ""))

        # the ramp: every player connected and joined before minute 1
        while time.time() < origin:
            progress.poll()
            if locust.lead.poll() is not None:
                raise SetupError(f"Locust exited ({locust.lead.returncode}) during the ramp: {locust.tail()} "
                                 f"(logs in {run_dir})")
            for gw in gateways:
                if gw.proc.poll() is not None:
                    raise SetupError(f"gateway on port {gw.port} exited ({gw.proc.returncode}) during the ramp "
                                     f"(log {gw.log})")
            time.sleep(0.5)
        progress.poll()
        if not progress.last:
            raise SetupError(f"Locust wrote no progress within {origin - launched:.0f} s: {locust.tail()} "
                             f"(logs in {run_dir})")
        connected = progress.name("connect").get("count", 0) - progress.name("connect").get("failures", 0)
        joined = progress.name("join").get("count", 0) - progress.name("join").get("failures", 0)
        if connected == 0:
            raise SetupError(f"no player could connect (logs in {run_dir})")
        log(f"ramp done: {connected}/{args.players} connected, {joined} joined")
        keys_start = count_prefix(rdb, prefix)

        # the soak (and the drop and recovery): a sample every --sample-s seconds
        samples: list[dict[str, Any]] = []
        keys_end = keys_recovered = None
        server_soak_end: list[dict[str, Any]] = []
        server_recovered: list[dict[str, Any]] = []
        load_cpu0 = cpu_ms(locust.pids())
        # every --sample-s s; the soak's last sample 1 s before the drop (or the end), and the
        # recovery's last one 1.5 s before Locust stops its players
        last_soak = soak_s - 1.0
        times = [k * args.sample_s for k in range(int(soak_s // args.sample_s))] + [last_soak]
        if args.drop:
            times += [soak_s + k * args.sample_s for k in range(1, int(args.recovery_s // args.sample_s))
                      if k * args.sample_s < args.recovery_s - 2] + [soak_s + args.recovery_s - 1.5]
        for t_rel in times:
            while time.time() < origin + t_rel:
                if locust.lead.poll() is not None:
                    break
                time.sleep(min(0.5, max(0.0, origin + t_rel - time.time())))
            if locust.lead.poll() is not None:
                break
            progress.poll()
            now = time.time()
            sample: dict[str, Any] = {"t": round(now - origin, 1), "phase": "soak" if now < (drop_at or end_at)
                                      else "recovery",
                                      "rss_kb": [rss_kb(gw.pids()) for gw in gateways],
                                      "cpu_ms": [round(cpu_ms(gw.pids())) for gw in gateways],
                                      "redis_used_memory": redis_used(rdb),
                                      "load_cpu_ms": round(cpu_ms(locust.pids())),
                                      "users": progress.last.get("users"), "failures": progress.last.get("failures")}
            move, bcast = progress.name("move"), progress.name("broadcast")
            sample["moves_per_s"], sample["broadcasts_per_s"] = move.get("rps"), bcast.get("rps")
            sample["move_p99_10s"], sample["broadcast_p99_10s"] = move.get("p99"), bcast.get("p99")
            prev = samples[-1] if samples else None
            samples.append(sample)
            cpu = ""
            if prev:
                dt = (sample["t"] - prev["t"]) * 1000
                cpu = " cpu " + "/".join(f"{(c - p) / dt:.0%}" for c, p in zip(sample["cpu_ms"], prev["cpu_ms"],
                                                                                 strict=True))
                cpu += f" load cpu {(sample['load_cpu_ms'] - prev['load_cpu_ms']) / dt:.0%}"
            rec, cut = progress.name("recovery"), progress.name("drop")
            extra = f" | resumed {rec.get('count', 0) - rec.get('failures', 0)}/{cut.get('count', 0)}" \
                if sample["phase"] == "recovery" else ""
            used = sample["redis_used_memory"]
            log(f"t={sample['t']:6.0f}s users {sample['users']} moves/s {move.get('rps', 0):.0f} "
                f"bcast/s {bcast.get('rps', 0):.0f} failures {sample['failures']} move p99 {move.get('p99')} ms "
                f"bcast p99 {bcast.get('p99')} ms | rss MB "
                + "/".join(f"{r / 1024:.1f}" for r in sample["rss_kb"]) + cpu
                + (f" | redis {used / 1048576:.1f} MB" if used is not None else "") + extra)
            if t_rel == last_soak:
                keys_end = count_prefix(rdb, prefix)
                server_soak_end = scrape_all(gateways)
            elif t_rel == times[-1]:
                keys_recovered = count_prefix(rdb, prefix)
                server_recovered = scrape_all(gateways)
        # Locust ends by itself (-t); its final line comes once its players have stopped
        deadline = time.monotonic() + 60
        while locust.lead.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        progress.poll()
        if progress.final is None:
            raise SetupError(f"Locust ended without its final figures: {locust.tail()} (logs in {run_dir})")
        server = scrape_all(gateways)
        time.sleep(2.0)  # the gateways end the sessions of players that left
        keys_after = count_prefix(rdb, prefix)
        load_cpu1 = cpu_ms(locust.pids()) if locust.lead.poll() is None else samples[-1]["load_cpu_ms"]
        got = {"server": server, "server_soak_end": server_soak_end, "rss_idle": rss_idle, "redis_idle": redis_idle,
               "connected": connected, "joined": joined, "keys_start": keys_start, "keys_end": keys_end,
               "keys_recovered": keys_recovered, "server_recovered": server_recovered,
               "keys_after": keys_after, "load_cpu0": load_cpu0, "load_cpu1": load_cpu1, "pin": pin,
               "run_dir": str(run_dir), "prefix": prefix, "drop_at": drop_at}
        return report(args, gateways, samples, progress, got)
    finally:
        if locust is not None:
            locust.stop()
        for gw in gateways:
            gw.stop()
        if own_redis is not None:
            own_redis.stop()
        else:
            try:
                n = drop_prefix(rdb, prefix)
                log(f"deleted {n} Redis keys under {prefix}:*")
            except Exception as e:  # cleanup only: say so, keep the figures
                log(f"could not delete Redis keys {prefix}:* ({e})")


def report(args: argparse.Namespace, gateways: list[Gateway], samples: list[dict[str, Any]], progress: Progress,
           got: dict[str, Any]) -> dict[str, Any]:
    server, server_soak_end, rss_idle = got["server"], got["server_soak_end"], got["rss_idle"]
    final = progress.final or {}
    soak_s = args.minutes * 60
    soak = [s for s in samples if s["phase"] == "soak"]
    if not soak:
        raise SetupError("no sample was taken during the soak")
    warm_t = min(60.0, soak_s / 2)
    start = soak[0]
    warm = next((s for s in soak if s["t"] >= warm_t - 0.5), soak[-1])
    end = soak[-1]
    after = samples[-1]
    per_gw = args.players / len(gateways)
    span = end["t"] - warm["t"]
    gws = []
    for i, gw in enumerate(gateways):
        drift = end["rss_kb"][i] - warm["rss_kb"][i]
        gws.append({
            "url": gw.url, "rss_kb_idle": rss_idle[i], "rss_kb_start": start["rss_kb"][i],
            "rss_kb_warm": warm["rss_kb"][i], "rss_kb_end": end["rss_kb"][i],
            "rss_kb_max": max(s["rss_kb"][i] for s in soak), "rss_kb_after_drop": after["rss_kb"][i],
            "drift_kb": drift, "drift_kb_per_player_per_min": per_player_minute(drift, per_gw, span),
            "cpu_share": round((end["cpu_ms"][i] - start["cpu_ms"][i]) / ((end["t"] - start["t"]) * 1000), 3)
            if end["t"] > start["t"] else None,
            "log": log_problems(gw.log), "metrics": server[i],
        })
    used = [s["redis_used_memory"] for s in soak]
    redis_mem = {"idle": got["redis_idle"], "start": start["redis_used_memory"], "warm": warm["redis_used_memory"],
                 "end": end["redis_used_memory"], "max": max((u for u in used if u is not None), default=None),
                 "after_drop": after["redis_used_memory"], "keys_start": got["keys_start"],
                 "keys_end": got["keys_end"], "keys_recovered": got["keys_recovered"],
                 "keys_after_all_left": got["keys_after"],
                 # what players left behind (the instances' own keys and the budgets, which expire
                 # within abuse_window_s, are not theirs)
                 "leftover_keys": sum(n for kind, n in (got["keys_after"] or {}).items()
                                      if kind not in ("total", "inst", "instances", "budget"))}
    if warm["redis_used_memory"] is not None and end["redis_used_memory"] is not None:
        redis_mem["drift_bytes"] = end["redis_used_memory"] - warm["redis_used_memory"]
    windows = final.get("minutes") or progress.windows
    per_move = events_per_move(args.players, args.room_size)
    minutes = []
    for w in windows:
        if 1 <= w["index"] <= args.minutes and not w.get("after_drop"):
            names = w["names"]
            at = min(soak, key=lambda s, w=w: abs(s["t"] - w["index"] * 60))  # the sample at the minute's end
            ok = (names.get("move", {}).get("count", 0) or 0) - (names.get("move", {}).get("failures", 0) or 0)
            received = sum((names.get(n, {}).get("count", 0) or 0) for n in ("broadcast", "replayed"))
            minutes.append({"minute": w["index"], "seconds": w["seconds"], "rss_kb_at_end": at["rss_kb"],
                            "delivery": round(received / (ok * per_move), 4) if ok else None,
                            "silent": names.get("silent", {}).get("count", 0),
                            "redis_used_memory_at_end": at["redis_used_memory"],
                            "move": percentiles(names.get("move")), "broadcast": percentiles(names.get("broadcast")),
                            "other_failures": {n: v["failures"] for n, v in names.items()
                                               if v["failures"] and n not in ("move", "broadcast")}})
    ramp = next((w for w in windows if w["index"] == 0), None)
    after_windows = [w for w in windows if w.get("after_drop")]
    names = final.get("names", {})
    result: dict[str, Any] = {
        "bench": "soak", "players": args.players, "minutes": args.minutes, "instances": len(gateways),
        "room_size": args.room_size, "move_rate": args.move_rate, "spawn_rate": args.spawn_rate,
        "locust_processes": 1 + args.workers, "pinned": got["pin"], "code": code_version(),
        "redis_prefix": got["prefix"], "run_dir": got["run_dir"],
        "ramp": {"connected": got["connected"], "joined": got["joined"],
                 "failures": {n: v["failures"] for n, v in (ramp or {}).get("names", {}).items() if v["failures"]},
                 "connect": percentiles((ramp or {}).get("names", {}).get("connect")),
                 "join": percentiles((ramp or {}).get("names", {}).get("join"))},
        "gateways": gws,
        "redis": redis_mem,
        "per_minute": minutes,
        "soak_totals": {
            name: {"count": sum(m[name]["count"] or 0 for m in minutes),
                   "failures": sum(m[name]["failures"] or 0 for m in minutes),
                   "worst_minute_p99": max((m[name]["p99"] for m in minutes if m[name]["p99"] is not None),
                                           default=None)}
            for name in ("move", "broadcast")},
        "loadgen_cpu_share": round((got["load_cpu1"] - got["load_cpu0"])
                                   / max(1.0, (after["t"] - start["t"]) * 1000), 3),
        "totals": {"requests": final.get("requests"), "failures": final.get("failures"),
                   "names": names, "errors": final.get("errors", [])},
        "seq_repeats": sum(e["occurrences"] for e in final.get("errors", []) if e["error"] == "repeat"),
        "seq_gaps": sum(e["occurrences"] for e in final.get("errors", []) if str(e["error"]).startswith("gap")),
        "samples": samples,
    }
    if args.drop:
        drop, rec = names.get("drop", {}), names.get("recovery", {})
        dropped = drop.get("count", 0)
        resumed = rec.get("count", 0) - rec.get("failures", 0)
        after_names: dict[str, dict[str, int]] = {}
        for w in after_windows:
            for n, v in w["names"].items():
                a = after_names.setdefault(n, {"count": 0, "failures": 0})
                a["count"] += v["count"]
                a["failures"] += v["failures"]
        result["mass_drop"] = {
            "dropped": dropped, "resumed": resumed, "all_resumed": dropped == args.players and resumed == dropped,
            "not_resumed": rec.get("failures", 0),
            "recovery_p50_ms": rec.get("p50"), "recovery_p90_ms": rec.get("p90"), "recovery_p99_ms": rec.get("p99"),
            "time_until_all_resumed_ms": rec.get("max") if resumed == dropped and dropped else None,
            "slowest_resume_ms": rec.get("max"),
            "cut_spread_ms": drop.get("max"),
            "reconnect_jitter_s": args.reconnect_jitter,
            "server": [delta(a, b) for a, b in zip(got["server_recovered"], server_soak_end, strict=False)],
            "resume_attempts": names.get("resume", {}).get("count", 0),
            "resume_failures": names.get("resume", {}).get("failures", 0),
            "replayed": names.get("replayed", {}).get("count", 0),
            "after_drop": after_names,
            "recovery_s": args.recovery_s,
            # move events received per move over the expected, over the run's last 10 s (everyone
            # had long resumed): below 1 means some players get less than their rooms send
            "delivery_last_10s": progress.delivery(got["drop_at"] + args.recovery_s - 12,
                                                   got["drop_at"] + args.recovery_s - 2, per_move),
            "silent": names.get("silent", {}).get("count", 0),
        }
    return result


def print_tables(res: dict[str, Any]) -> None:
    rows: list[tuple[str, object]] = [
        ("players / gateways", f"{res['players']} over {res['instances']} (rooms of {res['room_size']}, "
                               f"{res['move_rate']:g} moves/s each), {res['minutes']:g} min"),
        ("ramp", f"{res['ramp']['connected']} connected, {res['ramp']['joined']} joined, connect p50/p99 "
                 f"{res['ramp']['connect']['p50']}/{res['ramp']['connect']['p99']} ms, failures: "
                 + (", ".join(f"{n} {v}" for n, v in res["ramp"]["failures"].items()) or "0")),
    ]
    for i, gw in enumerate(res["gateways"]):
        rows.append((f"gateway {i + 1} RSS (MB)",
                     f"idle {gw['rss_kb_idle'] / 1024:.1f}, start {gw['rss_kb_start'] / 1024:.1f}, "
                     f"warm {gw['rss_kb_warm'] / 1024:.1f}, end {gw['rss_kb_end'] / 1024:.1f}, "
                     f"max {gw['rss_kb_max'] / 1024:.1f}, after drop {gw['rss_kb_after_drop'] / 1024:.1f}"))
        rows.append((f"gateway {i + 1} drift", f"{gw['drift_kb']:+d} KB warm->end = "
                     f"{gw['drift_kb_per_player_per_min']} KB per player per minute; CPU {gw['cpu_share']:.0%}; "
                     f"log problem lines {gw['log']['problem_lines']}"))
    r = res["redis"]
    if r.get("drift_bytes") is not None:
        rows.append(("redis used_memory (MB)", f"warm {r['warm'] / 1048576:.2f}, end {r['end'] / 1048576:.2f} "
                     f"({r['drift_bytes'] / 1024:+.0f} KB), keys {(r['keys_start'] or {}).get('total')} -> "
                     f"{(r['keys_end'] or {}).get('total')}"))
    def kinds(d: dict[str, int] | None) -> str:
        return "?" if d is None else f"{d['total']} (" + ", ".join(f"{k} {v}" for k, v in sorted(d.items())
                                                                   if k != "total") + ")"

    rows.append(("redis keys", f"soak start {kinds(r['keys_start'])}, soak end {kinds(r['keys_end'])}"))
    if res.get("mass_drop"):
        rows.append(("redis keys recovered", kinds(r["keys_recovered"])))
    rows.append(("redis keys all left", f"{kinds(r['keys_after_all_left'])}; left behind by players: "
                 f"{r['leftover_keys']}"))
    rows.append(("seq repeats / gaps", f"{res['seq_repeats']} / {res['seq_gaps']}"))
    rows.append(("loadgen CPU", f"{res['loadgen_cpu_share']:.0%} of a core"))
    for name in ("move", "broadcast"):
        t = res["soak_totals"][name]
        rows.append((f"soak {name}", f"{t['count']} ({t['failures']} failures), worst minute p99 "
                                     f"{t['worst_minute_p99']} ms"))
    md = res.get("mass_drop")
    if md:
        rows.append(("mass drop", f"{md['dropped']} cut, {md['resumed']} resumed, {md['not_resumed']} not resumed, "
                                  f"{md['resume_failures']} failed resume attempts, {md['replayed']} replayed"))
        rows.append(("recovery (ms)", f"p50 {md['recovery_p50_ms']}, p99 {md['recovery_p99_ms']}, "
                                      f"all resumed after {md['time_until_all_resumed_ms']}"))
        for i, srv in enumerate(md["server"]):
            rows.append((f"gateway {i + 1} after drop", ", ".join(
                f"{k} {v}" if not isinstance(v, dict) else f"{k} " + "/".join(f"{lk} {lv}" for lk, lv in v.items())
                for k, v in srv.items() if k not in ("moves", "deliveries")) or "nothing"))
        bad = {n: v["failures"] for n, v in md["after_drop"].items() if v["failures"]}
        rows.append(("after the drop", f"delivery over the last 10 s {md['delivery_last_10s']} of expected, "
                                       f"{md['silent']} players silent (connected, no move event for 5 s)"))
        rows.append(("failures after drop", ", ".join(f"{n} {v}" for n, v in bad.items()) or "0"))
    for i, gw in enumerate(res["gateways"]):
        if gw["log"]["problem_lines"]:
            lg = gw["log"]
            rows.append((f"gateway {i + 1} log", f"{lg['tracebacks']} tracebacks: " + " | ".join(lg["exceptions"][:2])
                         + "; logged: " + " | ".join(lg["logged"][:3])))
    errors = res["totals"]["errors"]
    rows.append(("errors", "; ".join(f"{e['name']}: {e['error']} x{e['occurrences']}" for e in errors[:5]) or "none"))
    print(table(rows))
    print()
    print(f"{'minute':>6} {'moves':>7} {'fail':>5} {'p50':>5} {'p99':>5} {'max':>6}   "
          f"{'bcasts':>8} {'fail':>5} {'p50':>5} {'p99':>5} {'max':>6} {'delivery':>8}   {'RSS MB gw1/gw2':>14} "
          f"{'redis MB':>8}")
    for m in res["per_minute"]:
        mv, bc = m["move"], m["broadcast"]
        rss = "/".join(f"{r / 1024:.1f}" for r in m["rss_kb_at_end"])
        used = m["redis_used_memory_at_end"]
        print(f"{m['minute']:>6} {mv['count']:>7} {mv['failures']:>5} {mv['p50']!s:>5} {mv['p99']!s:>5} "
              f"{mv['max']!s:>6}   {bc['count']:>8} {bc['failures']:>5} {bc['p50']!s:>5} {bc['p99']!s:>5} "
              f"{bc['max']!s:>6} {m['delivery']!s:>8}   {rss:>14} {used / 1048576 if used is not None else 0:>8.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--players", type=int, default=1000, help="players (default 1000)")
    ap.add_argument("--minutes", type=float, default=10.0, help="soak length in minutes (default 10)")
    ap.add_argument("--room-size", type=int, default=10, help="players per room (default 10)")
    ap.add_argument("--move-rate", type=float, default=1.0, help="moves per second per player (default 1)")
    ap.add_argument("--redis", default="",
                    help="Redis URL the gateways share (default: a redis-server of the run's own on a free "
                         "port); keys under a per-run prefix, deleted afterwards")
    ap.add_argument("--drop", action=argparse.BooleanOptionalAction, default=True,
                    help="drop every player at once after the soak and time their resumes (default on)")
    ap.add_argument("--recovery-s", type=float, default=30.0, help="run time after the drop (default 30)")
    ap.add_argument("--reconnect-jitter", type=float, default=0.0,
                    help="after the drop, each player resumes after a random 0..this many s (default 0: at once)")
    ap.add_argument("--spawn-rate", type=float, default=100.0, help="players started per second (default 100)")
    ap.add_argument("--ramp-margin", type=float, default=10.0,
                    help="seconds added to players/spawn-rate before minute 1 starts (default 10)")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--workers", type=int, default=0,
                    help="Locust workers under a master (default 0: one process; one holds 1000 players)")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "bench.toml", help="gateway config")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU the gateways are pinned to (default 0)")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU Locust is pinned to (default 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything with taskset")
    args = ap.parse_args()
    if args.players < 2 or args.room_size < 1 or args.minutes <= 0 or args.move_rate <= 0 or args.spawn_rate <= 0:
        ap.error("--players (at least 2), --room-size, --minutes, --move-rate and --spawn-rate must be positive")
    if args.sample_s < 1 or args.recovery_s < 5 or args.reconnect_jitter < 0 or args.workers < 0:
        ap.error("--sample-s >= 1, --recovery-s >= 5, --reconnect-jitter >= 0 and --workers >= 0")
    if (args.minutes * 60) % args.sample_s:
        ap.error("--minutes * 60 must be a multiple of --sample-s")
    url = urllib.parse.urlsplit(args.redis or "redis://127.0.0.1")
    if url.scheme not in ("redis", "unix") or (url.scheme == "redis" and url.hostname not in LOCAL_HOSTS):
        ap.error("--redis must be a redis:// URL on this machine (redis://127.0.0.1:PORT/DB)")
    code, res = run_and_report(NAME, run, args)
    if res is None:
        return code
    print_tables(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
