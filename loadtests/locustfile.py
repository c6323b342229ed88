"""Locust players that speak gamegw's contract.

Run it through ``gamectl loadtest`` (which starts Locust headless, mints tokens, shows progress
and checks thresholds), or with Locust directly::

    locust -f loadtests/locustfile.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000 \\
        --scenario steady --room-size 10 --move-rate 1

Each simulated player is one :class:`Player`: a websocket connection to ``/game`` (the lean
client in :mod:`loadtests.sioclient`), a token minted from the configured key (``--gw-config``
and ``GAMEGW_*`` variables, as ``gamectl token`` does) or printed by ``--token-cmd``, and a
room shared with ``--room-size - 1`` other players, spread over all Locust workers.

What is recorded, as Locust request type ``sio``:

=============  ===========================================================================
``connect``    TCP connect until the ``session`` event (a refusal is a failure)
``join``       ``join`` until its ack (an error ack is a failure)
``leave``      ``leave`` until its ack (churn scenario)
``move``       ``move`` until its ack: the move's round trip (an error ack is a failure)
``broadcast``  the move's send time (carried in the action as ``t``) until its ``move``
               event arrives, at the sender and at every other member; a sequence gap or
               repeat in the room is a failure
``replayed``   a missed ``move`` replayed after a resume (latency = its age)
``resume``     reconnect after a drop until the ``session`` event; ``resumed: false`` fails
``lost``       the gateway closed the connection (a failure; the player reconnects)
=============  ===========================================================================

Scenarios (``--scenario``):

* ``steady``: join one room and move at ``--move-rate`` moves per second.
* ``churn``: as steady, but every ``--churn-every`` moves leave the room and join another.
* ``storm``: as steady, and every ``--drop-every`` seconds (on wall-clock boundaries, so every
  process drops at the same moment) all players cut their connection without a goodbye and
  reconnect with ``auth.last_seq``; the gateway must resume them and replay what they missed.
* ``idle``: join one room and only answer heartbeats (memory and heartbeat cost).

Move timers start at a random phase, so moves arrive spread over each second rather than as one
burst. Broadcast latency compares clocks across processes: on several machines, keep them synced.
"""

from __future__ import annotations

import itertools
import os
import random
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import gevent
import orjson
from gevent import GreenletExit
from locust import User, events, runners, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

from loadtests.sioclient import Closed, GameSocket, Refused

SCENARIOS = ("steady", "churn", "storm", "idle")
REQUEST_TYPE = "sio"
runners.WORKER_REPORT_INTERVAL = 1.0  # workers report every second, so progress is live


def _quit_after_final_reports(quit: Any) -> Any:
    """At the end of a headless run the master sends ``quit`` and waits only 0.5 s for the
    workers' last stats, so the samples of a worker's last second can be lost. Stopping the
    workers first (they finish their step and report every second) and waiting for one more
    report makes the master's totals match what the gateway counted."""

    def patched(self: MasterRunner) -> None:
        if self.state not in (runners.STATE_INIT, runners.STATE_STOPPED, runners.STATE_STOPPING):
            self.stop()
            gevent.sleep(runners.WORKER_REPORT_INTERVAL * 2)
        quit(self)

    return patched


MasterRunner.quit = _quit_after_final_reports(MasterRunner.quit)  # type: ignore[method-assign]


class AckError(Exception):
    """An error ack: the message is its code."""


class SeqError(Exception):
    """A gap or a repeat in a room's sequence numbers."""


class Lost(Exception):
    """The gateway ended the connection."""


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("gamegw", "Options of the gamegw players (loadtests/locustfile.py)")
    group.add_argument("--scenario", choices=SCENARIOS, default="steady", env_var="GAMEGW_LT_SCENARIO",
                       help="steady | churn | storm | idle (see the module docstring)")
    group.add_argument("--room-size", type=int, default=10, env_var="GAMEGW_LT_ROOM_SIZE",
                       help="Players per room")
    group.add_argument("--move-rate", type=float, default=1.0, env_var="GAMEGW_LT_MOVE_RATE",
                       help="Moves per second per player")
    group.add_argument("--churn-every", type=int, default=5, env_var="GAMEGW_LT_CHURN_EVERY",
                       help="churn: moves between a leave and the next join")
    group.add_argument("--drop-every", type=float, default=20.0, env_var="GAMEGW_LT_DROP_EVERY",
                       help="storm: seconds between mass drops")
    group.add_argument("--reconnect-delay", type=float, default=1.0, env_var="GAMEGW_LT_RECONNECT_DELAY",
                       help="storm: each dropped player waits a random 0..this many seconds before resuming")
    group.add_argument("--token-cmd", default="", env_var="GAMEGW_LT_TOKEN_CMD",
                       help="Command printing a token for a user ({user} is replaced, else the user is appended)")
    group.add_argument("--gw-config", default="", env_var="GAMEGW_LT_CONFIG",
                       help="gamegw TOML settings whose key mints the tokens (GAMEGW_* variables apply too)")
    group.add_argument("--total-users", type=int, default=0, env_var="GAMEGW_LT_TOTAL_USERS",
                       help="Players in the whole swarm, to size the room space (default: --users)")
    group.add_argument("--run-id", default="", env_var="GAMEGW_LT_RUN_ID",
                       help="Prefix of user ids and room names (default: random per run)")
    group.add_argument("--progress-file", default="", env_var="GAMEGW_LT_PROGRESS",
                       help="Master/standalone: append a JSON line of stats here every second")


class Swarm:
    """What the players of one process share: options, numbering and token minting."""

    def __init__(self, environment: Environment) -> None:
        opts = environment.parsed_options
        self.scenario: str = getattr(opts, "scenario", "steady")
        self.room_size = max(1, int(getattr(opts, "room_size", 10)))
        self.move_rate = float(getattr(opts, "move_rate", 1.0))
        self.churn_every = max(1, int(getattr(opts, "churn_every", 5)))
        self.drop_every = max(1.0, float(getattr(opts, "drop_every", 20.0)))
        self.reconnect_delay = max(0.0, float(getattr(opts, "reconnect_delay", 1.0)))
        self.token_cmd: str = getattr(opts, "token_cmd", "")
        self.run_id: str = getattr(opts, "run_id", "") or f"lt{os.getpid()}"
        runner = environment.runner
        self.worker_index = runner.worker_index if isinstance(runner, WorkerRunner) and runner.worker_index >= 0 else 0
        self.worker_count = max(1, int(getattr(opts, "expect_workers", 1) or 1)) if isinstance(
            runner, WorkerRunner) else 1
        self.total_users = max(1, int(getattr(opts, "total_users", 0) or getattr(opts, "num_users", 0) or 1))
        self.rooms = max(1, -(-self.total_users // self.room_size))
        self._numbers = itertools.count()
        self._settings: Any = None
        if not self.token_cmd:
            self._settings = _load_settings(getattr(opts, "gw_config", ""))

    def next_player(self) -> tuple[str, str]:
        """A user id and its home room, unique across workers; rooms span workers."""
        n = next(self._numbers) * self.worker_count + self.worker_index
        return f"{self.run_id}-p{n}", self.room_name(n // self.room_size)

    def room_name(self, index: int) -> str:
        return f"{self.run_id}-r{index}"

    def token(self, user_id: str) -> str:
        if self.token_cmd:
            cmd = self.token_cmd.replace("{user}", user_id) if "{user}" in self.token_cmd \
                else f"{self.token_cmd} {shlex.quote(user_id)}"
            done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode != 0 or not done.stdout.strip():
                raise RuntimeError(f"--token-cmd exited {done.returncode}: {done.stderr.strip()[:200]}")
            return done.stdout.strip().splitlines()[-1]
        from server.auth import mint

        return mint(self._settings, user_id, ttl_s=6 * 3600)


def _load_settings(config: str) -> Any:
    from server.config import load_settings

    environ = {k: v for k, v in os.environ.items() if k != "GAMEGW_CONFIG"}
    return load_settings(environ, Path(config) if config else None, {})


_swarm: Swarm | None = None


def swarm(environment: Environment) -> Swarm:
    # Options from the master reach a worker with its first spawn message, so this is built
    # when the first player starts, not at import.
    global _swarm
    if _swarm is None:
        _swarm = Swarm(environment)
    return _swarm


class Player(User):
    """One simulated player (see the module docstring for what it records)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.swarm = swarm(environment)
        self.user_id, self.room = self.next_identity()
        self.sock: GameSocket | None = None
        self.token = ""
        # room -> last seq seen; a room being joined maps to the moves that came before its ack
        self.last_seq: dict[str, int] = {}
        self.joining: dict[str, list[dict[str, Any]]] = {}
        self.moves = 0
        self.lost: Any = None
        self.session_id: str | None = None
        self.replay_before_ms = 0.0
        self.drop_epoch = int(time.time() // self.swarm.drop_every)
        period = self.period()
        self.next_tick = time.monotonic() + random.uniform(0, period)

    def next_identity(self) -> tuple[str, str]:
        return self.swarm.next_player()

    # -- recording ---------------------------------------------------------------------------

    def record(self, name: str, started: float | None, *, ms: float | None = None,
               exc: Exception | None = None, length: int = 0) -> None:
        elapsed = ms if ms is not None else (time.perf_counter() - (started or 0)) * 1000
        self.environment.events.request.fire(request_type=REQUEST_TYPE, name=name, response_time=elapsed,
                                             response_length=length, exception=exc, context=None)

    # -- lifecycle ---------------------------------------------------------------------------

    def on_start(self) -> None:
        try:
            self.token = self.swarm.token(self.user_id)
        except Exception as exc:  # a token command failing is the run's failure, not a crash
            self.record("connect", None, ms=0, exc=exc)
            raise
        if self.open("connect", {"token": self.token}):
            self.join(self.room)

    def on_stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def period(self) -> float:
        if self.swarm.scenario == "idle" or self.swarm.move_rate <= 0:
            return 5.0
        return 1.0 / self.swarm.move_rate

    def wait_time(self) -> float:
        self.next_tick = max(self.next_tick + self.period(), time.monotonic() - self.period())
        return max(0.0, self.next_tick - time.monotonic())

    def open(self, name: str, auth: dict[str, Any]) -> bool:
        """Connect (or reconnect) and record it as ``name``; False when refused or failed."""
        sock = GameSocket(self.host, on_event=self.on_event, on_close=self.on_close)
        started = time.perf_counter()
        try:
            session = sock.connect(auth)
        except Refused as exc:
            self.record(name, started, exc=AckError(exc.message))
            return False
        except (OSError, Closed, gevent.Timeout) as exc:
            sock.drop()
            self.record(name, started, exc=Closed(f"{type(exc).__name__}: {exc}"))
            return False
        self.sock, self.lost = sock, None
        self.session_id = session.get("session_id")
        if name == "resume" and not session.get("resumed"):
            self.record(name, started, exc=AckError("not_resumed"))
            self.last_seq.clear()
            self.joining.clear()
            self.join(self.room)
            return True
        self.record(name, started)
        return True

    # -- the scenario's step -----------------------------------------------------------------

    @task
    def tick(self) -> None:
        if self.sock is None or not self.sock.connected:
            self.reconnect()
            return
        scenario = self.swarm.scenario
        if scenario == "idle":
            return
        if scenario == "storm":
            epoch = int(time.time() // self.swarm.drop_every)
            if epoch != self.drop_epoch:
                self.drop_epoch = epoch
                self.sock.drop()
                self.sock = None
                gevent.sleep(random.uniform(0, self.swarm.reconnect_delay))
                self.reconnect()
                return
        if scenario == "churn" and self.moves and self.moves % self.swarm.churn_every == 0:
            self.moves += 1
            self.change_room()
            return
        self.move()

    def reconnect(self) -> None:
        """After a drop (ours or the network's): resume with what this player has seen."""
        self.sock = None
        if not self.session_id:  # never got in: this is another first connect
            if self.open("connect", {"token": self.token}):
                self.join(self.room)
            return
        self.replay_before_ms = time.time() * 1000
        self.open("resume", {"token": self.token, "last_seq": dict(self.last_seq)})

    def join(self, room: str) -> None:
        assert self.sock is not None
        self.joining[room] = []
        started = time.perf_counter()
        try:
            ack = self.sock.call("join", {"room": room})
        except (Closed, gevent.Timeout) as exc:
            self.joining.pop(room, None)
            self.record("join", started, exc=Closed(str(exc)))
            return
        early = self.joining.pop(room, [])
        if not ack or not ack.get("ok"):
            self.record("join", started, exc=AckError(_code(ack)))
            return
        self.record("join", started)
        self.room = room
        self.last_seq[room] = int(ack.get("seq", 0))
        for event in early:
            self.on_move(event)

    def change_room(self) -> None:
        assert self.sock is not None
        started = time.perf_counter()
        try:
            ack = self.sock.call("leave", {"room": self.room})
        except (Closed, gevent.Timeout) as exc:
            self.record("leave", started, exc=Closed(str(exc)))
            return
        self.last_seq.pop(self.room, None)
        self.record("leave", started, exc=None if ack and ack.get("ok") else AckError(_code(ack)))
        others = [i for i in range(self.swarm.rooms) if self.swarm.room_name(i) != self.room]
        self.join(self.swarm.room_name(random.choice(others)) if others else self.room)

    def move(self) -> None:
        assert self.sock is not None
        self.moves += 1
        action = {"t": time.time() * 1000, "n": self.moves}
        started = time.perf_counter()
        try:
            pending = self.sock.emit("move", {"room": self.room, "action": action})
            try:
                ack = self.sock.wait(pending)
            except GreenletExit:
                # Locust can stop a player just as it wakes up for a move; the gateway may
                # already have it, so its ack is recorded before the player goes.
                self.record_move(started, self.sock.wait(pending, 2.0))
                raise
        except (Closed, gevent.Timeout) as exc:
            self.record("move", started, exc=Closed(str(exc) or type(exc).__name__))
            return
        self.record_move(started, ack)

    def record_move(self, started: float, ack: Any) -> None:
        self.record("move", started, exc=None if ack and ack.get("ok") else AckError(_code(ack)))

    # -- server events (in the connection's reader greenlet) ---------------------------------

    def on_event(self, name: str, data: Any) -> None:
        if name == "move" and isinstance(data, dict):
            room = data.get("room")
            pending = self.joining.get(room)  # type: ignore[arg-type]
            if pending is not None:
                pending.append(data)
            else:
                self.on_move(data)

    def on_move(self, data: dict[str, Any]) -> None:
        room, seq = data.get("room"), data.get("seq")
        last = self.last_seq.get(room)  # type: ignore[arg-type]
        if last is None or not isinstance(seq, int):
            return  # a room this player has left
        now_ms = time.time() * 1000
        action = data.get("action")
        sent = action.get("t") if isinstance(action, dict) else None
        latency = now_ms - sent if isinstance(sent, (int, float)) else 0.0
        exc: Exception | None = None
        if seq != last + 1:
            exc = SeqError(f"gap: expected {last + 1}" if seq > last else "repeat")
        if seq > last:
            self.last_seq[room] = seq  # type: ignore[index]
        name = "replayed" if isinstance(sent, (int, float)) and sent < self.replay_before_ms else "broadcast"
        self.record(name, None, ms=max(0.0, latency), exc=exc)

    def on_close(self, reason: Any) -> None:
        code = reason.get("reason") if isinstance(reason, dict) else str(reason)
        self.lost = reason
        self.record("lost", None, ms=0, exc=Lost(str(code)))


def _code(ack: Any) -> str:
    if isinstance(ack, dict) and isinstance(ack.get("error"), dict):
        return str(ack["error"].get("code", "error"))
    return "bad_ack"


# -- live progress for gamectl (master or standalone process only) ------------------------------

def _entry(stats: Any, name: str) -> dict[str, Any]:
    entry = stats.entries.get((name, REQUEST_TYPE))
    if entry is None or not entry.num_requests:
        return {"count": 0, "failures": 0, "rps": 0.0, "p50": None, "p99": None}
    return {
        "count": entry.num_requests,
        "failures": entry.num_failures,
        "rps": round(entry.current_rps, 1),
        "p50": entry.get_current_response_time_percentile(0.5),
        "p99": entry.get_current_response_time_percentile(0.99),
    }


def _progress_loop(environment: Environment, path: str) -> None:
    with open(path, "ab", buffering=0) as out:
        while True:
            runner = environment.runner
            stats = environment.stats
            line = {
                "t": time.time(),
                "state": runner.state if runner else "",
                "users": runner.user_count if runner else 0,
                "workers": len(runner.clients.ready + runner.clients.running + runner.clients.spawning)
                if isinstance(runner, MasterRunner) else None,
                "requests": stats.total.num_requests,
                "failures": stats.total.num_failures,
                "names": {name: _entry(stats, name) for name in
                          ("connect", "join", "move", "broadcast", "resume", "replayed", "leave", "lost")},
            }
            out.write(orjson.dumps(line) + b"\n")
            gevent.sleep(1.0)


@events.test_start.add_listener
def _start_progress(environment: Environment, **_: Any) -> None:
    path = getattr(environment.parsed_options, "progress_file", "") if environment.parsed_options else ""
    if path and not isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_progress_loop, environment, path)


@events.quitting.add_listener
def _final_stats(environment: Environment, **_: Any) -> None:
    """Write the run's totals as the progress file's last line: ``{"final": {...}}``."""
    path = getattr(environment.parsed_options, "progress_file", "") if environment.parsed_options else ""
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    # Locust can fire ``quitting`` while players are still finishing their last step (the
    # run-time limit and the shutdown both stop the runner): wait for them, within the stop timeout.
    runner = environment.runner
    deadline = time.monotonic() + (environment.stop_timeout or 0) + 2
    while runner is not None and runner.user_count > 0 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    if getattr(environment.parsed_options, "csv_prefix", None):
        # Locust's CSV writer rewrites the files every second and only closes them at exit: one
        # more round makes the CSV hold the final figures, as this summary does.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)
    stats = environment.stats
    names: dict[str, Any] = {}
    for (name, method), entry in stats.entries.items():
        if method != REQUEST_TYPE:
            continue
        names[name] = {
            "count": entry.num_requests,
            "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            "avg": round(entry.avg_response_time, 1),
            "p50": entry.get_response_time_percentile(0.5),
            "p90": entry.get_response_time_percentile(0.9),
            "p99": entry.get_response_time_percentile(0.99),
            "max": round(entry.max_response_time or 0, 1),
        }
    errors = [{"name": e.name, "error": str(e.error), "occurrences": e.occurrences}
              for e in stats.errors.values()]
    final = {
        "names": names,
        "requests": stats.total.num_requests,
        "failures": stats.total.num_failures,
        "errors": sorted(errors, key=lambda e: -e["occurrences"]),
        "start": stats.total.start_time,
        "end": stats.total.last_request_timestamp,
    }
    with open(path, "ab") as out:
        out.write(orjson.dumps({"final": final}) + b"\n")
