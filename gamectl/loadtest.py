"""``gamectl loadtest``: a Locust swarm of gamegw players, headless or from Locust's web UI,
with live progress.

The players are ``gamectl/players/locustfile.py``. This command starts Locust (one process, or a
master and ``--workers`` worker processes on this machine), follows the run through the
progress file the locustfile writes every second, optionally scrapes the gateway's ``/metrics``
for the server side of the run, and ends with a summary and an exit code that says whether the
run met ``--max-fail-ratio`` and ``--max-p99-ms``.

With ``--web``, Locust serves its web UI instead of starting the swarm itself: the operator
starts, grows and stops the swarm from the page, and the run ends on Ctrl-C here (or
``--run-time`` after the first start). The summary then covers the last start from the page,
as the page's own tables do (Locust clears its statistics whenever a stopped swarm starts
again); the gateway's figures cover the whole session.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .output import fail, parse_duration, print_json, stderr, stdout
from .procstat import cpu_ms, rss_kb

LOCUSTFILE = Path(__file__).resolve().parent / "players" / "locustfile.py"
SCENARIOS = ("steady", "churn", "storm", "idle")
TICK_PHASES = ("random", "aligned")
SHOWN = ("connect", "join", "leave", "move", "broadcast", "resume", "replayed", "lost")
GAMEPLAY = ("move", "broadcast")  # what --max-p99-ms judges


@dataclass
class Plan:
    users: int
    spawn_rate: float
    run_time_s: float
    scenario: str
    host: str
    room_size: int
    move_rate: float
    workers: int
    remote_workers: int
    master_host: str
    master_port: int
    token_cmd: str
    config: Path | None
    csv: str | None
    html: str | None
    drop_every_s: float
    reconnect_delay_s: float
    churn_every: int
    stop_timeout_s: float
    web: bool = False
    tick_phase: str = "random"
    web_host: str = "127.0.0.1"
    web_port: int = 0
    run_id: str = field(default_factory=lambda: f"lt-{uuid.uuid4().hex[:6]}")

    def gamegw_args(self, progress: Path | None) -> list[str]:
        args = ["--scenario", self.scenario, "--room-size", str(self.room_size), "--move-rate", str(self.move_rate),
                "--drop-every", str(self.drop_every_s), "--reconnect-delay", str(self.reconnect_delay_s),
                "--churn-every", str(self.churn_every), "--run-id", self.run_id, "--total-users", str(self.users),
                "--tick-phase", self.tick_phase]
        if self.token_cmd:
            args += ["--token-cmd", self.token_cmd]
        if self.config:
            args += ["--gw-config", str(self.config.resolve())]
        if progress:
            args += ["--progress-file", str(progress)]
        return args

    @property
    def web_url(self) -> str:
        """Where the operator opens Locust's web UI (a wildcard bind is reached on loopback here)."""
        host = "127.0.0.1" if self.web_host in ("*", "", "0.0.0.0") else self.web_host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.web_port}"

    def commands(self, run_dir: Path, progress: Path) -> tuple[list[str], list[list[str]]]:
        """The Locust command lines: the master (or the only process) and the local workers.

        With the web UI, ``-u`` and ``-r`` are the page's defaults, and Locust gets no run time:
        this command ends the run (see :func:`_run`)."""
        base = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
        mode = ["--web-host", self.web_host, "--web-port", str(self.web_port)] if self.web else \
            ["--headless", "--only-summary", "-t", f"{self.run_time_s:g}s"]
        lead = [*base, *mode, "-u", str(self.users), "-r", str(self.spawn_rate),
                "--host", self.host, "--stop-timeout", f"{self.stop_timeout_s:g}",
                "--loglevel", "WARNING", "--logfile", str(run_dir / "locust-master.log"),
                *self.gamegw_args(progress)]
        if self.csv:
            lead += ["--csv", self.csv, "--csv-full-history"]
        if self.html:
            lead += ["--html", self.html]
        if self.workers == 0:
            return lead, []
        lead += ["--master", "--expect-workers", str(self.workers + self.remote_workers),
                 "--master-bind-host", self.master_host, "--master-bind-port", str(self.master_port)]
        workers = [[*base, "--worker", "--master-host", self.master_host, "--master-port", str(self.master_port),
                    "--loglevel", "WARNING", "--logfile", str(run_dir / f"locust-worker-{i}.log")]
                   for i in range(self.workers)]
        return lead, workers


# -- the gateway's /metrics -------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout_s: float = 2.0) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _by_label(samples: Samples, name: str, label: str, **fixed: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        d = dict(labels)
        if sample_name == name and label in d and all(d.get(k) == v for k, v in fixed.items()):
            out[d[label]] = out.get(d[label], 0.0) + value
    return out


@dataclass
class ServerWatch:
    """Before/after scrapes of the gateway and the highest connection count seen between."""

    url: str
    first: Samples = field(default_factory=dict)
    last: Samples = field(default_factory=dict)
    peak_connections: float = 0.0
    errors: int = 0

    def poll(self) -> None:
        try:
            samples = scrape(self.url)
        except (OSError, ValueError):
            self.errors += 1
            return
        if not self.first:
            self.first = samples
        self.last = samples
        self.peak_connections = max(self.peak_connections, _value(samples, "gamegw_connections"))

    def connections(self) -> float:
        return _value(self.last, "gamegw_connections")

    def summary(self) -> dict[str, Any] | None:
        if not self.first:
            return None

        def delta(name: str, **labels: str) -> float:
            return _value(self.last, name, **labels) - _value(self.first, name, **labels)

        def delta_by(name: str, label: str, **fixed: str) -> dict[str, int]:
            before = _by_label(self.first, name, label, **fixed)
            after = _by_label(self.last, name, label, **fixed)
            return {k: int(v - before.get(k, 0.0)) for k, v in sorted(after.items()) if v - before.get(k, 0.0) > 0}

        deliveries = delta("gamegw_deliveries_total")
        cpu_s = delta("process_cpu_seconds_total")
        acks = delta_by("gamegw_acks_total", "result")
        return {
            "connects": int(delta("gamegw_connects_total")),
            "peak_connections": int(self.peak_connections),
            "moves": int(delta("gamegw_moves_total")),
            "move_acks_ok": int(_value(self.last, "gamegw_acks_total", event="move", result="ok")
                                - _value(self.first, "gamegw_acks_total", event="move", result="ok")),
            "join_acks_ok": int(_value(self.last, "gamegw_acks_total", event="join", result="ok")
                                - _value(self.first, "gamegw_acks_total", event="join", result="ok")),
            "deliveries": int(deliveries),
            "resumes": delta_by("gamegw_resumes_total", "result"),
            "cpu_s": round(cpu_s, 2),
            "cpu_ms_per_1k_deliveries": round(cpu_s * 1000 / deliveries * 1000, 2) if deliveries else None,
            "refusals": delta_by("gamegw_refusals_total", "code"),
            "error_acks": {k: v for k, v in acks.items() if k != "ok"},
            "scrape_errors": self.errors,
        }


# -- the Locust processes ---------------------------------------------------------------------

@dataclass
class Proc:
    """One Locust process and its /proc readings, counted from just before its first player: the
    baseline the process writes itself at its test start (``baseline-PID.json`` in the run's
    folder, see the locustfile), else from :meth:`mark` (the first progress line), so that
    start-up does not weigh on the per-player figures."""

    role: str
    popen: subprocess.Popen[bytes]
    baseline: Path | None = None
    cpu_ms_first: float = 0.0
    cpu_ms_last: float = 0.0
    rss_kb_first: int = 0
    rss_kb_peak: int = 0
    marked: bool = False
    players: int | None = None  # the most players it held at once, as it wrote (``players-PID.json``)

    def mark(self) -> None:
        if self.marked:
            return
        pid = self.popen.pid
        self.cpu_ms_first = self.cpu_ms_last = cpu_ms([pid])
        self.rss_kb_first = self.rss_kb_peak = rss_kb([pid])
        self.load_baseline()

    def load_baseline(self) -> None:
        """Take the process's own reading from before its first player, once it has written it."""
        if self.baseline is None or not self.baseline.exists():
            return
        try:
            data = orjson.loads(self.baseline.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        self.cpu_ms_first, self.rss_kb_first = float(data["cpu_ms"]), int(data["rss_kb"])
        self.cpu_ms_last = max(self.cpu_ms_last, self.cpu_ms_first)
        self.rss_kb_peak = max(self.rss_kb_peak, self.rss_kb_first)
        self.baseline, self.marked = None, True

    def load_players(self, run_dir: Path) -> None:
        try:
            self.players = int(orjson.loads((run_dir / f"players-{self.popen.pid}.json").read_bytes())["peak"])
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def sample(self, *, cpu: bool) -> None:
        """Read RSS, and CPU time when ``cpu`` (inside the run window, not the wind-down)."""
        self.load_baseline()
        if self.popen.poll() is not None:
            return
        pid = self.popen.pid
        if cpu:
            self.cpu_ms_last = cpu_ms([pid]) or self.cpu_ms_last
        self.rss_kb_peak = max(self.rss_kb_peak, rss_kb([pid]))


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("*", "0.0.0.0") else "", 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Locust's server binds
        try:
            s.bind((host if host not in ("*", "0.0.0.0") else "", port))
        except OSError:
            return False
    return True


def _follow(path: Path) -> Iterator[dict[str, Any]]:
    """New complete JSON lines of the progress file since the last call."""
    offset = 0
    while True:
        lines: list[dict[str, Any]] = []
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            offset += end
            for raw in chunk[:end].splitlines():
                try:
                    lines.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue
        except FileNotFoundError:
            pass
        yield from lines
        yield {}


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# -- rendering --------------------------------------------------------------------------------

def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}"


def progress_table(plan: Plan, line: dict[str, Any], elapsed: float, server: ServerWatch | None) -> Table:
    names = line.get("names", {})
    move, bcast = names.get("move", {}), names.get("broadcast", {})
    requests, failures = line.get("requests", 0), line.get("failures", 0)
    title = f"gamectl loadtest · {plan.scenario} · {plan.host}" + (f" · web UI {plan.web_url}" if plan.web else "")
    table = Table(title=title, title_justify="left", box=None)
    for col in ("elapsed", "users", "moves/s", "bcast/s", "failures", "move p50/p99 ms", "bcast p50/p99 ms"):
        table.add_column(col, justify="right")
    if server is not None:
        table.add_column("gw conns", justify="right")
    if plan.web:
        table.add_column("swarm")
    row = [
        _elapsed(plan, elapsed),
        f"{line.get('users', 0)}" if plan.web else f"{line.get('users', 0)}/{plan.users}",
        f"{move.get('rps', 0):.0f}",
        f"{bcast.get('rps', 0):.0f}",
        f"{failures} ({failures / requests:.2%})" if requests else "0",
        f"{_ms(move.get('p50'))}/{_ms(move.get('p99'))}",
        f"{_ms(bcast.get('p50'))}/{_ms(bcast.get('p99'))}",
    ]
    if server is not None:
        row.append(f"{server.connections():.0f}")
    if plan.web:
        row.append(str(line.get("state", "waiting for a start on the page")))
    table.add_row(*row)
    return table


def _elapsed(plan: Plan, elapsed: float) -> str:
    return f"{elapsed:.0f}/{plan.run_time_s:.0f}s" if plan.run_time_s else f"{elapsed:.0f}s"


def summary_tables(report: dict[str, Any]) -> list[Table]:
    tables = []
    t = Table(title="requests (Locust type sio; times in ms)", title_justify="left")
    for col in ("name", "count", "failures", "req/s", "p50", "p90", "p99", "max"):
        t.add_column(col, justify="left" if col == "name" else "right")
    for name, e in report["requests"].items():
        t.add_row(name, str(e["count"]), str(e["failures"]), f"{e['rps']:.1f}", _ms(e["p50"]), _ms(e["p90"]),
                  _ms(e["p99"]), _ms(e["max"]))
    tables.append(t)
    if report["errors"]:
        t = Table(title="failures", title_justify="left")
        for col in ("name", "error", "count"):
            t.add_column(col, justify="right" if col == "count" else "left")
        for err in report["errors"][:12]:
            t.add_row(err["name"], err["error"], str(err["occurrences"]))
        tables.append(t)
    lg = report["loadgen"]
    t = Table(title="load generator (this machine's Locust processes)", title_justify="left")
    for col in ("processes", "CPU (cores)", "peak RSS MB", "CPU µs/s per player", "RSS KB per player"):
        t.add_column(col, justify="right")
    t.add_row(str(lg["processes"]), f"{lg['cpu_cores']:.2f}", f"{lg['rss_mb_peak']:.0f}",
              _ms(lg["cpu_us_per_s_per_player"]), _ms(lg["rss_kb_per_player"]))
    tables.append(t)
    if len(lg["per_process"]) > 1:
        t = Table(title="each worker", title_justify="left")
        for col in ("worker", "players", "CPU (cores)", "CPU µs/s per player", "RSS KB per player"):
            t.add_column(col, justify="left" if col == "worker" else "right")
        for w in lg["per_process"]:
            t.add_row(w["role"], str(w["players"] if w["players"] is not None else "-"), f"{w['cpu_cores']:.2f}",
                      _ms(w["cpu_us_per_s_per_player"]), _ms(w["rss_kb_per_player"]))
        tables.append(t)
    srv = report.get("server")
    if srv:
        t = Table(title="gateway (from --metrics-url)", title_justify="left")
        t.add_column("figure")
        t.add_column("value", justify="right")
        for key in ("connects", "peak_connections", "moves", "deliveries", "cpu_s", "cpu_ms_per_1k_deliveries"):
            t.add_row(key, str(srv[key]))
        t.add_row("resumes", ", ".join(f"{k} {v}" for k, v in srv["resumes"].items()) or "0")
        t.add_row("refusals", ", ".join(f"{k} {v}" for k, v in srv["refusals"].items()) or "0")
        t.add_row("error acks", ", ".join(f"{k} {v}" for k, v in srv["error_acks"].items()) or "0")
        tables.append(t)
    return tables


def violations(names: dict[str, Any], requests: int, failures: int, max_fail_ratio: float,
               max_p99_ms: float | None) -> list[str]:
    """The thresholds a run broke: a run at a threshold keeps it, only one above breaks it."""
    broken = []
    if not requests:
        broken.append("no request was recorded")
    fail_ratio = failures / requests if requests else 0.0
    if fail_ratio > max_fail_ratio:
        broken.append(f"failure ratio {fail_ratio:.4f} > --max-fail-ratio {max_fail_ratio:g}")
    if max_p99_ms is not None:
        for name in GAMEPLAY:
            p99 = names.get(name, {}).get("p99")
            if p99 is not None and p99 > max_p99_ms:
                broken.append(f"{name} p99 {p99:g} ms > --max-p99-ms {max_p99_ms:g}")
    return broken


def _process_cost(proc: Proc, wall_s: float) -> dict[str, Any]:
    """One player process (the only one, or a worker): the players it held and what each cost it."""
    players = proc.players or 0
    cpu_s = (proc.cpu_ms_last - proc.cpu_ms_first) / 1000
    return {
        "role": proc.role, "pid": proc.popen.pid, "players": proc.players,
        "cpu_cores": round(cpu_s / wall_s, 3) if wall_s else 0.0,
        "cpu_us_per_s_per_player": round(cpu_s / wall_s / players * 1e6, 1) if wall_s and players else None,
        "rss_kb_per_player": round(max(0, proc.rss_kb_peak - proc.rss_kb_first) / players, 1) if players else None,
    }


def build_report(plan: Plan, final: dict[str, Any], procs: list[Proc], wall_s: float,
                 server: ServerWatch | None, max_fail_ratio: float, max_p99_ms: float | None,
                 web: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary. ``web`` (with ``--web``): the UI's address, the starts from the page and the
    most players that ran in the last one, which the figures per player divide by."""
    users = int(web["peak_users"]) if web else plan.users
    names = final.get("names", {})
    ordered = {n: names[n] for n in SHOWN if n in names} | {n: v for n, v in names.items() if n not in SHOWN}
    requests, failures = final.get("requests", 0), final.get("failures", 0)
    fail_ratio = failures / requests if requests else 0.0
    cpu_s = sum(p.cpu_ms_last - p.cpu_ms_first for p in procs) / 1000
    player_procs = [p for p in procs if p.role != "master"]
    local_users = users * len(player_procs) / (len(player_procs) + plan.remote_workers)
    rss_grown = [max(0, p.rss_kb_peak - p.rss_kb_first) for p in player_procs]
    cpu_player_s = sum(p.cpu_ms_last - p.cpu_ms_first for p in player_procs) / 1000
    broken = violations(names, requests, failures, max_fail_ratio, max_p99_ms)
    return {
        "ok": not broken,
        "violations": broken,
        "run": {"run_id": plan.run_id, "scenario": plan.scenario, "host": plan.host, "users": users,
                "spawn_rate": plan.spawn_rate, "run_time_s": plan.run_time_s or None, "room_size": plan.room_size,
                "move_rate": plan.move_rate, "workers": plan.workers, "remote_workers": plan.remote_workers,
                "measured_s": round(wall_s, 1), "web": web},
        "total": {"requests": requests, "failures": failures, "fail_ratio": round(fail_ratio, 6)},
        "requests": ordered,
        "errors": final.get("errors", []),
        "loadgen": {
            "processes": len(procs),
            "cpu_cores": round(cpu_s / wall_s, 3) if wall_s else 0.0,
            "rss_mb_peak": round(sum(p.rss_kb_peak for p in procs) / 1024, 1),
            # what the figures per player leave out: the processes just before their first player
            "rss_kb_before_players": sum(p.rss_kb_first for p in procs),
            "cpu_us_per_s_per_player": round(cpu_player_s / wall_s / local_users * 1e6, 1)
            if wall_s and local_users else None,
            "rss_kb_per_player": round(sum(rss_grown) / local_users, 1) if local_users else None,
            "per_process": [_process_cost(p, wall_s) for p in player_procs],
        },
        "server": server.summary() if server else None,
        "reports": {"csv_prefix": plan.csv, "html": plan.html},
    }


# -- the command ------------------------------------------------------------------------------

def loadtest(
    users: Annotated[int, typer.Option("--users", "-u", min=1, help=(
        "Players to simulate (with --web: the page's default).")
    )] = 100,
    spawn_rate: Annotated[float, typer.Option("--spawn-rate", "-r", min=0.1, help=(
        "Players started per second (with --web: the page's default)."))] = 50.0,
    run_time: Annotated[str | None, typer.Option("--run-time", "-t", help=(
        "How long to run: 30s, 5m, 1h. Default 60s; with --web, counted from the first start on the "
        "page, and by default the run lasts until Ctrl-C."), show_default=False)] = None,
    scenario: Annotated[str, typer.Option(help="steady | churn (leave/join) | storm (mass drops and resumes) "
                                               "| idle (heartbeats only).")] = "steady",
    host: Annotated[str, typer.Option(help="The gateway's base URL.")] = "http://127.0.0.1:8000",
    room_size: Annotated[int, typer.Option(min=1, help="Players per room (rooms span the workers).")] = 10,
    move_rate: Annotated[float, typer.Option(min=0.0, help="Moves per second per player.")] = 1.0,
    tick_phase: Annotated[str, typer.Option(help=(
        "random: each player moves at a phase of its own, spread over each period; aligned: every player "
        "on the wall clock's whole periods, all in the same instant."))] = "random",
    token_cmd: Annotated[str | None, typer.Option(help="Command that prints a token for a user ({user} is "
                                                       "replaced, else the user id is appended). Default: mint "
                                                       "with the configured key.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", envvar="GAMEGW_CONFIG", show_envvar=False,
                                                help="TOML settings whose key mints the tokens.")] = None,
    workers: Annotated[str, typer.Option(help=(
        "Locust worker processes on this machine, under a master: a number (0 runs one process, the "
        "default) or auto, one per CPU this command may use. The summary shows each one's players and "
        "their cost."))] = "0",
    remote_workers: Annotated[int, typer.Option(min=0, help=(
        "Workers on other machines the master waits for (start them with the command this prints)."))] = 0,
    master_host: Annotated[str, typer.Option(help=(
        "Address the master listens on and workers connect to; use an address other machines reach to "
        "add remote workers."))] = "127.0.0.1",
    master_port: Annotated[int, typer.Option(help="Master port (default: a free one).")] = 0,
    csv: Annotated[str | None, typer.Option("--csv", help=(
        "Write Locust's CSV reports: PATH_stats.csv, PATH_stats_history.csv, PATH_failures.csv, "
        "PATH_exceptions.csv."))] = None,
    html: Annotated[str | None, typer.Option("--html", help="Write Locust's HTML report to this file.")] = None,
    max_fail_ratio: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "Exit 1 when failures / requests exceeds this."))] = 0.01,
    max_p99_ms: Annotated[float | None, typer.Option(help=(
        "Exit 1 when the p99 of move acks or of broadcasts exceeds this many ms."))] = None,
    metrics_url: Annotated[str | None, typer.Option(help=(
        "The gateway's /metrics: adds the server side (CPU per 1k deliveries, peak connections, "
        "refusals and error acks by code) to the summary."))] = None,
    drop_every: Annotated[str, typer.Option(help="storm: time between mass drops.")] = "20s",
    reconnect_delay: Annotated[str, typer.Option(help="storm: dropped players resume after a random "
                                                      "0..this delay.")] = "1s",
    churn_every: Annotated[int, typer.Option(min=1, help="churn: moves between changing rooms.")] = 5,
    stop_timeout: Annotated[str, typer.Option(help="At the end, time players get to finish their step.")] = "5s",
    web: Annotated[bool, typer.Option("--web", help=(
        "Serve Locust's web UI instead of starting the swarm: start, grow and stop it from the page "
        "(--users and --spawn-rate are its defaults; the scenario options are this command's). "
        "Ctrl-C here ends the run and prints the summary of the last start."))] = False,
    web_host: Annotated[str, typer.Option(help="--web: address the UI listens on.")] = "127.0.0.1",
    web_port: Annotated[int, typer.Option(min=0, max=65535, help="--web: the UI's port (0: a free one).")] = 8089,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print the summary as JSON (progress goes to stderr). With --web, the first line of output is "
        '{"web_ui": URL}, once the page answers.'))] = False,
) -> None:
    """Run a Locust swarm of gamegw players against a gateway and summarize it: headless, or
    driven from Locust's web UI with --web.

    Every player connects with its own JWT, joins a room shared with other players and plays
    the scenario. Locust request type `sio` records connect, join, move (ack round trip),
    broadcast (send until the move reaches each member), resume and replayed moves; sequence
    gaps and error acks are failures. Exit code 0 when the thresholds hold, 1 when they do not
    (or the run failed), 2 for bad usage.

    With --web, this prints the UI's URL and follows the swarm while the page drives it. A stop
    on the page leaves the run open (start it again there, which resets Locust's statistics);
    Ctrl-C here, or --run-time after the first start, stops the players and ends the run; the
    summary, --csv and --html then cover the last start, the gateway's figures (--metrics-url)
    the whole session.
    """
    if scenario not in SCENARIOS:
        raise typer.BadParameter(f"{scenario!r}: pick one of {', '.join(SCENARIOS)}", param_hint="--scenario")
    if tick_phase not in TICK_PHASES:
        raise typer.BadParameter(f"{tick_phase!r}: pick one of {', '.join(TICK_PHASES)}", param_hint="--tick-phase")
    if not host.startswith(("http://", "ws://")):
        raise typer.BadParameter(f"{host!r}: use http://HOST:PORT", param_hint="--host")
    if importlib.util.find_spec("locust") is None:
        fail(1, "Locust is not installed in this environment", "pip install -e '.[load]'")
    run_s = parse_duration(run_time, "--run-time") if run_time is not None else 0.0 if web else 60.0
    if run_time is not None and run_s <= 0:
        raise typer.BadParameter("must be positive", param_hint="--run-time")
    plan = Plan(users=users, spawn_rate=spawn_rate, run_time_s=run_s, scenario=scenario, host=host.rstrip("/"),
                room_size=room_size, move_rate=move_rate, workers=parse_workers(workers),
                remote_workers=remote_workers,
                master_host=master_host, master_port=master_port or _free_port(master_host),
                token_cmd=token_cmd or "", config=config, csv=csv, html=html,
                drop_every_s=parse_duration(drop_every, "--drop-every"),
                reconnect_delay_s=parse_duration(reconnect_delay, "--reconnect-delay"),
                churn_every=churn_every, stop_timeout_s=parse_duration(stop_timeout, "--stop-timeout"),
                web=web, tick_phase=tick_phase, web_host=web_host, web_port=web_port or _free_port(web_host))
    if web and web_port and not _port_free(web_host, web_port):
        fail(1, f"port {web_port} on {web_host} is in use: Locust's web UI could not listen there",
             "pass --web-port 0 for a free port, or another --web-port")
    _preflight(plan)
    server = ServerWatch(metrics_url) if metrics_url else None
    if server is not None:
        server.poll()
        if not server.first:
            fail(1, f"cannot read {metrics_url}", "pass the gateway's /metrics URL, e.g. http://127.0.0.1:8000/metrics")
    report = _run(plan, server, max_fail_ratio, max_p99_ms, as_json)
    if as_json:
        print_json(report)
    else:
        for table in summary_tables(report):
            stdout.print(table)
        if report["violations"]:
            stdout.print("[bold red]FAILED:[/] " + "; ".join(report["violations"]))
        else:
            stdout.print("[bold green]passed[/] the thresholds")
    if not report["ok"]:
        raise typer.Exit(1)


def parse_workers(value: str) -> int:
    """--workers: a count from 0 to 64, or ``auto``: one per CPU this process may run on."""
    if value.strip().lower() == "auto":
        return min(64, len(os.sched_getaffinity(0)))
    try:
        count = int(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: a number from 0 to 64, or auto", param_hint="--workers") from None
    if not 0 <= count <= 64:
        raise typer.BadParameter(f"{count}: a number from 0 to 64, or auto", param_hint="--workers")
    return count


def _preflight(plan: Plan) -> None:
    """Fail early, with a hint, on what would make every player fail."""
    try:
        with urllib.request.urlopen(plan.host.replace("ws://", "http://") + "/healthz", timeout=5):
            pass
    except (OSError, urllib.error.URLError) as exc:
        fail(1, f"the gateway at {plan.host} does not answer /healthz ({exc})",
             "start it (gamectl serve) or pass --host")
    if not plan.token_cmd:
        from gamegw.server.auth.tokens import mint
        from gamegw.server.protocol.errors import ConfigError

        from .settings import settings_from

        try:
            mint(settings_from(plan.config), "gamectl-loadtest-probe", ttl_s=60)
        except ConfigError as exc:
            fail(1, f"cannot mint tokens: {exc}", "set GAMEGW_JWT_SECRET or --config, or pass --token-cmd")


def _raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


WEB_STOPPED = ("cleanup", "stopping", "stopped")  # Locust runner states once a stop began


def _run(plan: Plan, server: ServerWatch | None, max_fail_ratio: float, max_p99_ms: float | None,
         as_json: bool) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="gamegw-loadtest-"))
    progress = run_dir / "progress.jsonl"
    lead_cmd, worker_cmds = plan.commands(run_dir, progress)
    _raise_nofile(plan.users + 512 if not plan.web else 65536)  # from the page, the swarm can grow
    console = stderr if as_json else Console()
    env = {**os.environ, "GAMEGW_LT_BASELINE_DIR": str(run_dir)}
    procs: list[Proc] = []

    def spawn(role: str, cmd: list[str]) -> Proc:
        log = (run_dir / f"{role}.out").open("wb")
        # no terminal for Locust: its key listener would set the operator's terminal to cbreak
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True, preexec_fn=_default_sigint)
        log.close()
        proc = Proc(role, popen, run_dir / f"baseline-{popen.pid}.json")
        procs.append(proc)
        return proc

    lead = spawn("master" if plan.workers else "locust", lead_cmd)
    for i, cmd in enumerate(worker_cmds):
        spawn(f"worker-{i}", cmd)
    if plan.workers and plan.remote_workers:
        console.print(f"[bold]waiting for {plan.remote_workers} remote worker(s).[/] On each machine, with the "
                      "same key (GAMEGW_JWT_SECRET or the config file) and this project installed, run:\n"
                      f"  {sys.executable} -m locust -f {LOCUSTFILE} --worker --master-host {plan.master_host} "
                      f"--master-port {plan.master_port}", highlight=False, soft_wrap=True)
    elif plan.workers:
        console.print(f"[dim]master on {plan.master_host}:{plan.master_port}; add workers elsewhere with "
                      f"--remote-workers and --master-host ADDRESS[/]", highlight=False)
    final: dict[str, Any] = {}
    last: dict[str, Any] = {}
    started = time.monotonic()
    test_started: float | None = None  # gamectl's first line of the current start
    first_start: float | None = None  # --web: --run-time counts from here
    stopped_at: float | None = None  # --web: the current start was seen stopping (a stop on the page)
    ended_at: float | None = None  # --web: this command ended the run
    starts = peak_users = 0
    interrupted = False
    live = Live(console=console, refresh_per_second=2, transient=False) if console.is_terminal else None
    next_plain = started + 5
    # SIGTERM (a supervisor, a CI timeout) ends the run as Ctrl-C does: Locust runs in sessions of
    # its own, which would otherwise outlive this command
    sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if plan.web:
            _await_web_ui(plan, lead, run_dir)
            _announce_web_ui(plan, console, as_json)
        if live:
            live.start()
        follower = _follow(progress)
        while True:
            for line in follower:
                if not line:
                    break
                if "final" in line:
                    final = line["final"]
                    continue
                last = line
                now = time.monotonic()
                if line.get("starts", 1) != starts:  # headless: the one start; --web: each from the page
                    starts, test_started, stopped_at, peak_users = line.get("starts", 1), now, None, 0
                    if first_start is None:
                        first_start = now
                        for proc in procs:
                            proc.mark()
                if line.get("state") in WEB_STOPPED and stopped_at is None:
                    stopped_at = now
                peak_users = max(peak_users, int(line.get("users") or 0), int(line.get("peak_users") or 0))
            now = time.monotonic()
            if plan.web:
                in_run = last.get("state") in ("spawning", "running")
                elapsed = (stopped_at or now) - test_started if test_started is not None else 0.0
            else:
                in_run = test_started is not None and now <= test_started + plan.run_time_s
                elapsed = now - started
            for proc in procs:
                proc.sample(cpu=in_run)
            if server is not None:
                server.poll()
            if live:
                live.update(progress_table(plan, last, elapsed, server))
            elif now >= next_plain and last:
                next_plain += 5
                _plain_progress(console, plan, last, elapsed)
            if lead.popen.poll() is not None:
                break
            deadline = first_start + plan.run_time_s if plan.web and plan.run_time_s and first_start else None
            if deadline is not None and now >= deadline:
                ended_at = now
                _end_run(plan, lead)
                break
            time.sleep(min(1.0, max(0.05, deadline - now)) if deadline is not None else 1.0)
    except KeyboardInterrupt:
        interrupted = True
        ended_at = time.monotonic()
        _end_run(plan, lead)
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        if live:
            live.stop()
        end = ended_at or time.monotonic()
        if plan.web:  # the last start, until its stop on the page or the end of the run
            wall_s = (stopped_at or end) - test_started if test_started is not None else 0.0
        else:
            wall_s = min(end - (test_started or started), plan.run_time_s)
        _stop_all(procs)
        for proc in procs:
            proc.load_players(run_dir)
    for line in _follow(progress):
        if not line:
            break
        if "final" in line:
            final = line["final"]
    if server is not None:
        server.poll()
    if not final:
        log = run_dir / ("locust-master.log" if plan.workers else "locust.out")
        fail(1, "Locust ended without results" + (" (interrupted)" if interrupted and not plan.web else ""),
             f"its log ({run_dir}):\n{_tail(run_dir / (lead.role + '.out')) or _tail(log)}")
    peak_users = max(peak_users, int(final.get("peak_users") or 0))
    if plan.web and final.get("started_at") and final.get("stopped_at"):
        wall_s = final["stopped_at"] - final["started_at"]  # exact, where this command polls every second
    web = {"url": plan.web_url, "starts": starts, "peak_users": peak_users} if plan.web else None
    return build_report(plan, final, procs, wall_s, server, max_fail_ratio, max_p99_ms, web)


def _default_sigint() -> None:
    """In a Locust process, before its exec: SIGINT is how this command ends a run, so it must not
    stay ignored when this command runs with it ignored (``nohup``, ``cmd &`` in a script)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _end_run(plan: Plan, lead: Proc) -> None:
    """Ctrl-C, or --web's run time: Locust stops its players, writes the totals and exits (a
    master first waits for its workers to stop and report, see the locustfile)."""
    if lead.popen.poll() is None:
        lead.popen.send_signal(signal.SIGINT)
    try:
        lead.popen.wait(timeout=plan.stop_timeout_s + (15 if plan.web else 10))
    except subprocess.TimeoutExpired:
        pass


def _await_web_ui(plan: Plan, lead: Proc, run_dir: Path, timeout_s: float = 60.0) -> None:
    """Wait until the UI answers and the local workers are in: a start before they are would
    find no worker to give players to."""
    deadline = time.monotonic() + timeout_s
    while True:
        if lead.popen.poll() is not None:
            log = _tail(run_dir / (lead.role + ".out")) or _tail(run_dir / "locust-master.log")
            fail(1, f"Locust exited before its web UI answered on {plan.web_url}", f"its log ({run_dir}):\n{log}")
        try:
            with urllib.request.urlopen(plan.web_url + "/stats/requests", timeout=2) as resp:
                stats = orjson.loads(resp.read())
            if int(stats.get("worker_count") or 0) >= plan.workers:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            fail(1, f"Locust's web UI did not answer on {plan.web_url} within {timeout_s:g} s"
                 + (f" with {plan.workers} workers in" if plan.workers else ""), f"see the logs in {run_dir}")
        time.sleep(0.2)


def _announce_web_ui(plan: Plan, console: Console, as_json: bool) -> None:
    if as_json:  # one line a script reads before the summary comes
        sys.stdout.write(orjson.dumps({"web_ui": plan.web_url}).decode() + "\n")
        sys.stdout.flush()
    stop = f"; the run ends {plan.run_time_s:g} s after the first start" if plan.run_time_s else ""
    console.print(f"[bold]Locust web UI:[/] {plan.web_url}\n[dim]start, grow and stop the swarm there (defaults: "
                  f"{plan.users} players at {plan.spawn_rate:g}/s){stop}; Ctrl-C here ends the run and prints "
                  "the summary[/]", highlight=False, soft_wrap=True)


def _plain_progress(console: Console, plan: Plan, line: dict[str, Any], elapsed: float) -> None:
    names = line.get("names", {})
    move, bcast = names.get("move", {}), names.get("broadcast", {})
    users = f"{line.get('users', 0)} ({line.get('state', '')})" if plan.web else f"{line.get('users', 0)}/{plan.users}"
    console.print(f"{elapsed:4.0f}s users {users} moves/s {move.get('rps', 0):.0f} "
                  f"bcast/s {bcast.get('rps', 0):.0f} failures {line.get('failures', 0)} "
                  f"move p50/p99 {_ms(move.get('p50'))}/{_ms(move.get('p99'))} ms", highlight=False)


def _stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()
