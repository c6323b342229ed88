"""Locust players that speak gamegw's contract.

Run it through ``gamectl loadtest`` (which starts Locust headless, or with its web UI under
``--web``, mints tokens, shows progress and checks thresholds), or with Locust directly::

    locust -f gamectl/players/locustfile.py --headless -u 100 -r 20 -t 60s --host http://127.0.0.1:8000 \\
        --scenario steady --room-size 10 --move-rate 1

Each simulated player is one :class:`Player`: a websocket connection to ``/game`` (the lean
client in :mod:`gamegw.gamectl.players.sioclient`), a token minted from the configured key (``--gw-config``
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
``silent``     a player in a room (moving, or in a room with others that move) has received no
               ``move`` event for ``max(5 s, 5 / --move-rate)`` while connected, not even the
               echo of its own moves (a failure, once per silence; latency = the silence so far)
``drop``       ``--drop-at``: this player's connection was cut (latency = how long after the
               drop moment its cut came)
``recovery``   ``--drop-at``: from the mass drop until this player's ``session`` event with
               ``resumed: true`` (retries included); ``resumed: false`` fails
=============  ===========================================================================

Scenarios (``--scenario``):

* ``steady``: join one room and move at ``--move-rate`` moves per second.
* ``churn``: as steady, but every ``--churn-every`` moves leave the room and join another.
* ``storm``: as steady, and every ``--drop-every`` seconds (on wall-clock boundaries, so every
  process drops at the same moment) all players cut their connection without a goodbye and
  reconnect with ``auth.last_seq``; the gateway must resume them and replay what they missed.
* ``idle``: join one room and only answer heartbeats (memory and heartbeat cost).

In any scenario, ``--drop-at EPOCH`` cuts every player's connection once, at that wall-clock
time (all of a process's sockets in one pass, no goodbye), and each player resumes right away
(or after a random 0..``--drop-reconnect-delay`` s) with ``auth.last_seq``; ``recovery`` records
how long each one took. ``--hosts URL1,URL2`` spreads the players over several gateways: player
*n* (numbered across workers) connects to the (*n* mod count)-th URL, so rooms of consecutive
players span them all.

With ``--progress-file``, the master (or only) process appends a JSON line of live stats every
second (what ``gamectl loadtest`` follows) from the test's first start, and a ``{"final": ...}``
line when it quits. Each line counts the starts so far (``"starts"``): from the web UI the swarm
can be stopped and started again, and Locust clears its statistics at each start. Every
``--window-s`` seconds (default 60) from ``--window-origin`` (default: the test's start; samples
before a later origin make window 0), and again at ``--drop-at``, the progress line written at
that moment also carries ``"minute": {...}``: the window's exact count, failures and
p50/p90/p99/max per request name, from the difference of Locust's cumulative response-time
tables (Locust rounds times above 100 ms to 2 significant digits). The final line lists them
all, the last partial window included, under ``"minutes"``.

Players' ticks start at a random phase, so moves arrive spread over each second rather than as
one burst; with ``--tick-phase aligned`` every player (of every process) ticks on the wall clock's
whole periods, all in the same instant, as in a game whose clients act on one server tick. A
process plays all its players' ticks from one schedule in its reactor greenlet (:mod:`.schedule`,
:mod:`.reactor`): a player's own greenlet only runs what blocks (connecting, joining, a room
change, a storm's drop), and an idle player has no tick at all. Broadcast latency compares
clocks across processes: on several machines, keep them synced.
"""

from __future__ import annotations

import itertools
import os
import random
import shlex
import subprocess
import time
import weakref
from pathlib import Path
from typing import Any

import gevent
import orjson
from gevent.event import Event
from locust import User, events, runners, task
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC, calculate_response_time_percentile

from gamegw.gamectl.players.bulkstats import BulkStats
from gamegw.gamectl.players.reactor import reactor
from gamegw.gamectl.players.sioclient import Closed, GameSocket, Refused
from gamegw.gamectl.procstat import cpu_ms, rss_kb

SCENARIOS = ("steady", "churn", "storm", "idle")
TICK_PHASES = ("random", "aligned")
REQUEST_TYPE = "sio"
runners.WORKER_REPORT_INTERVAL = 1.0  # workers report every second, so progress is live
BULK = BulkStats(REQUEST_TYPE)  # the broadcasts' latencies until their next flush (see .bulkstats)
BROADCASTS, MOVE_ACKS = BULK.latencies("broadcast"), BULK.latencies("move")
FLUSH_S = 0.5  # a process without a master flushes this often (a worker before each report too)
_environment: Environment | None = None


@events.init.add_listener
def _keep_environment(environment: Environment, **_: Any) -> None:
    global _environment
    _environment = environment


def flush() -> None:
    """Hand the latencies held in bulk to Locust's statistics now."""
    if _environment is not None:
        BULK.flush(_environment.stats)


@events.report_to_master.add_listener
def _flush_before_report(**_: Any) -> None:
    """A worker's report carries everything its players have received (this listener is added at
    import, before Locust's own, which serializes the statistics)."""
    flush()


def _flusher() -> None:
    peak = 0
    while True:
        gevent.sleep(FLUSH_S)
        flush()
        runner = _environment.runner if _environment is not None else None
        if runner is not None and runner.user_count > peak:
            peak = runner.user_count
            _note_players(peak)


def _note_players(peak: int) -> None:
    """For ``gamectl loadtest``'s summary: the most players this process has held at once."""
    folder = os.environ.get("GAMEGW_LT_BASELINE_DIR", "")
    if folder:
        path = Path(folder) / f"players-{os.getpid()}.json"
        scratch = path.with_suffix(".tmp")
        scratch.write_bytes(orjson.dumps({"pid": os.getpid(), "peak": peak}))
        scratch.replace(path)


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


class Silent(Exception):
    """A connected player in a room gets no room events any more."""


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("gamegw", "Options of the gamegw players (gamectl/players/locustfile.py)")
    group.add_argument("--scenario", choices=SCENARIOS, default="steady", env_var="GAMEGW_LT_SCENARIO",
                       help="steady | churn | storm | idle (see the module docstring)")
    group.add_argument("--room-size", type=int, default=10, env_var="GAMEGW_LT_ROOM_SIZE",
                       help="Players per room")
    group.add_argument("--move-rate", type=float, default=1.0, env_var="GAMEGW_LT_MOVE_RATE",
                       help="Moves per second per player")
    group.add_argument("--tick-phase", choices=TICK_PHASES, default="random", env_var="GAMEGW_LT_TICK_PHASE",
                       help="random: each player moves at a phase of its own, so moves spread over each period; "
                            "aligned: every player on the wall clock's whole periods, all in the same instant")
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
    group.add_argument("--hosts", default="", env_var="GAMEGW_LT_HOSTS",
                       help="Comma-separated gateway URLs: player n connects to the (n mod count)-th "
                            "(default: --host)")
    group.add_argument("--drop-at", type=float, default=0.0, env_var="GAMEGW_LT_DROP_AT",
                       help="Unix time (s) of one mass drop: every player cuts its connection and resumes")
    group.add_argument("--drop-reconnect-delay", type=float, default=0.0, env_var="GAMEGW_LT_DROP_RECONNECT_DELAY",
                       help="--drop-at: each player resumes after a random 0..this many seconds (default 0)")
    group.add_argument("--window-s", type=float, default=60.0, env_var="GAMEGW_LT_WINDOW_S",
                       help="--progress-file: length of the windows with exact per-window percentiles")
    group.add_argument("--window-origin", type=float, default=0.0, env_var="GAMEGW_LT_WINDOW_ORIGIN",
                       help="--progress-file: Unix time the first window starts (default: the test's start)")


class Swarm:
    """What the players of one process share: options, numbering and token minting."""

    def __init__(self, environment: Environment) -> None:
        opts = environment.parsed_options
        self.scenario: str = getattr(opts, "scenario", "steady")
        self.room_size = max(1, int(getattr(opts, "room_size", 10)))
        self.move_rate = float(getattr(opts, "move_rate", 1.0))
        self.tick_phase: str = getattr(opts, "tick_phase", "random") or "random"
        self.churn_every = max(1, int(getattr(opts, "churn_every", 5)))
        self.drop_every = max(1.0, float(getattr(opts, "drop_every", 20.0)))
        self.reconnect_delay = max(0.0, float(getattr(opts, "reconnect_delay", 1.0)))
        self.token_cmd: str = getattr(opts, "token_cmd", "")
        self.hosts = [h.strip().rstrip("/") for h in (getattr(opts, "hosts", "") or "").split(",") if h.strip()]
        self.drop_at = float(getattr(opts, "drop_at", 0.0) or 0.0)
        self.drop_reconnect_delay = max(0.0, float(getattr(opts, "drop_reconnect_delay", 0.0) or 0.0))
        self.dropped = False  # the --drop-at drop has happened in this process
        self.drop_started = 0.0
        self.players: weakref.WeakSet[Player] = weakref.WeakSet()
        self.run_id: str = getattr(opts, "run_id", "") or f"lt{os.getpid()}"
        runner = environment.runner
        self.worker_index = runner.worker_index if isinstance(runner, WorkerRunner) and runner.worker_index >= 0 else 0
        self.worker_count = max(1, int(getattr(opts, "expect_workers", 1) or 1)) if isinstance(
            runner, WorkerRunner) else 1
        self.total_users = max(1, int(getattr(opts, "total_users", 0) or getattr(opts, "num_users", 0) or 1))
        self.rooms = max(1, -(-self.total_users // self.room_size))
        self._numbers = itertools.count()
        self._settings: Any = None
        if self.drop_at > time.time():  # the schedule cuts everyone at the drop's moment
            reactor().schedule.at(time.monotonic() + self.drop_at - time.time(), self._drop_on_time, 0)
        if not self.token_cmd:
            self._settings = _load_settings(getattr(opts, "gw_config", ""))

    def next_player(self) -> tuple[str, str, str | None]:
        """A user id, its home room and its gateway (None: --host), unique across workers;
        rooms span workers (and gateways, with --hosts)."""
        n = next(self._numbers) * self.worker_count + self.worker_index
        host = self.hosts[n % len(self.hosts)] if self.hosts else None
        return f"{self.run_id}-p{n}", self.room_name(n // self.room_size), host

    def drop_due(self) -> bool:
        return bool(self.drop_at) and not self.dropped and time.time() >= self.drop_at

    def _drop_on_time(self, _: int) -> None:
        if not self.dropped:
            self.mass_drop()

    def mass_drop(self) -> None:
        """--drop-at: cut every connected player's connection now, in one pass."""
        self.dropped = True
        self.drop_started = time.time()
        for player in list(self.players):
            player.cut(self.drop_started)

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
        from gamegw.server.auth.tokens import mint

        return mint(self._settings, user_id, ttl_s=6 * 3600)


def _load_settings(config: str) -> Any:
    from gamegw.server.config import load_settings

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
        self.user_id, self.room, host = self.next_identity()
        if host:
            self.host = host
        self.sock: GameSocket | None = None
        self.token = ""
        # room -> last seq seen; a room being joined maps to the moves that came before its ack
        self.last_seq: dict[str, int] = {}
        self.joining: dict[str, list[tuple[dict[str, Any], float, int]]] = {}
        self.moves = 0
        self.moves_in_flight: dict[int, tuple[float, GameSocket]] = {}  # ack id -> (sent at, socket)
        self.lost: Any = None
        self.session_id: str | None = None
        self.replay_before_ms = 0.0
        self.last_event_at = time.time()  # the last move event (or join/resume): see ``silent``
        self.silent = False
        self.drop_epoch = int(time.time() // self.swarm.drop_every)
        self.period_s = self.period()
        self.next_tick = self.first_tick()
        # the process's schedule plays this player (see wait_time): its current entry, whether
        # this player's greenlet has it (then the schedule leaves it alone), and the greenlet's alarm
        self.entry = 0
        self.busy = True
        self.wake = Event()
        # --drop-at: when this player's connection was cut (Unix time) until it has resumed,
        # the socket that was cut, and when to resume (monotonic)
        self.recovering_from: float | None = None
        self.cut_sock: GameSocket | None = None
        self.resume_due: float | None = None
        self.swarm.players.add(self)

    def next_identity(self) -> tuple[str, str, str | None]:
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
        self.entry += 1  # what the schedule holds for this player is void
        self.busy = True
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def period(self) -> float:
        if self.swarm.scenario == "idle" or self.swarm.move_rate <= 0:
            return 5.0
        return 1.0 / self.swarm.move_rate

    def first_tick(self) -> float:
        """When this player's ticks start (monotonic time): at a random phase of its period, or
        with ``--tick-phase aligned`` at the wall clock's next multiple of it, where every player
        of every process ticks (as peer-bench's loadgen.js does: its moves all start in one loop)."""
        now = time.monotonic()
        if self.swarm.tick_phase == "aligned":
            wall = time.time()
            return now + (wall // self.period_s + 1) * self.period_s - wall
        return now + random.uniform(0, self.period_s)

    def wait_time(self) -> float:
        """Locust's wait between two runs of :meth:`tick`. The player's next tick goes into the
        process's schedule (:mod:`.schedule`), which plays it without this greenlet (:meth:`step`)
        as long as nothing blocks; this greenlet sleeps until the schedule (or a drop) wakes it
        for what does block: a reconnect, a room change, a storm's drop. Locust sees the player
        waiting meanwhile, so a stop ends it at once."""
        self.wake.clear()
        self.plan()
        self.busy = False
        self.wake.wait()
        self.busy = True
        return 0.0

    def plan(self) -> None:
        """Put this player's next tick in the schedule (its only entry from now on). An idle
        player that is connected has none: only the end of its connection (:meth:`on_close`) or
        a drop wakes it, so thousands of idle players cost their heartbeats and nothing else."""
        now = time.monotonic()
        self.entry += 1
        if self.resume_due is not None and self.sock is None:  # cut by --drop-at: resume then
            due = self.resume_due
        elif self.swarm.scenario == "idle" and self.sock is not None and self.sock.connected:
            return
        else:
            due = self.next_tick + self.period_s
            if due < now - self.period_s:  # more than a period late: catch up one tick, keep the phase
                due = self.first_tick() if self.swarm.tick_phase == "aligned" else now - self.period_s
            self.next_tick = due
        reactor().schedule.at(due, self.step, self.entry)

    def step(self, entry: int) -> None:
        """The schedule's call at this player's tick: the tick itself when it cannot block (a
        move, nearly always), else the player's greenlet is woken to run it."""
        if entry != self.entry or self.busy:
            return  # an entry left behind, or the greenlet has the player
        swarm = self.swarm
        if swarm.drop_at and swarm.drop_due():
            swarm.mass_drop()
        now = time.time()
        sock = self.sock
        scenario = swarm.scenario
        if sock is None or not sock.connected or (scenario == "storm" and self.storm_due(now)) or (
                scenario == "churn" and self.churn_due()):
            self.wake.set()
            return
        if scenario != "idle":
            self.check_silence(now)
            self.move(now)
        self.plan()

    def storm_due(self, now: float) -> bool:
        return int(now // self.swarm.drop_every) != self.drop_epoch

    def churn_due(self) -> bool:
        return bool(self.moves) and self.moves % self.swarm.churn_every == 0

    def cut(self, moment: float) -> None:
        """--drop-at: cut this player's connection without a goodbye; it resumes on its next step."""
        if not self.session_id:
            return  # never got in: nothing to resume
        if self.recovering_from is None:
            self.recovering_from = moment
        self.record("drop", None, ms=max(0.0, time.time() - (self.swarm.drop_at or moment)) * 1000)
        self.resume_due = time.monotonic() + random.uniform(0, self.swarm.drop_reconnect_delay)
        sock, self.sock = self.sock, None
        if sock is not None:
            self.cut_sock = sock
            sock.drop()
        self.wake.set()  # its greenlet plans the resume

    def open(self, name: str, auth: dict[str, Any]) -> bool:
        """Connect (or reconnect) and record it as ``name``; False when refused or failed."""
        if self.host is None:
            raise RuntimeError("Locust was started without --host")
        sock = GameSocket(self.host, on_move=self.on_move, on_close=self.on_close)
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
        recovering, self.recovering_from = self.recovering_from, None
        self.last_event_at = time.time()
        if name == "resume" and not session.get("resumed"):
            self.record(name, started, exc=AckError("not_resumed"))
            if recovering is not None:
                self.record("recovery", None, ms=(time.time() - recovering) * 1000, exc=AckError("not_resumed"))
            self.last_seq.clear()
            self.joining.clear()
            self.join(self.room)
            return True
        self.record(name, started)
        if recovering is not None:
            self.record("recovery", None, ms=(time.time() - recovering) * 1000)
        return True

    # -- the scenario's step -----------------------------------------------------------------

    @task
    def tick(self) -> None:
        """One tick in this player's greenlet, which may block (see :meth:`wait_time`)."""
        if self.swarm.drop_due():
            self.swarm.mass_drop()
        if self.sock is None or not self.sock.connected:
            if self.resume_due is not None and self.resume_due > time.monotonic():
                return  # cut by --drop-at, resuming after its random delay
            self.reconnect()
            return
        scenario = self.swarm.scenario
        if scenario == "idle":
            return
        now = time.time()
        if scenario == "storm" and self.storm_due(now):
            self.drop_epoch = int(now // self.swarm.drop_every)
            self.cut_sock = self.sock  # its moves in flight are cut off on purpose
            self.sock.drop()
            self.sock = None
            gevent.sleep(random.uniform(0, self.swarm.reconnect_delay))
            self.reconnect()
            return
        self.check_silence(now)
        if scenario == "churn" and self.churn_due():
            self.moves += 1
            self.change_room()
            return
        self.move(now)

    def check_silence(self, now: float) -> None:
        """A player that moves gets at least its own moves back: a long silence is a failure."""
        if self.silent or self.room not in self.last_seq or self.joining:
            return
        quiet = now - self.last_event_at
        if quiet > max(5.0, 5 * self.period_s):
            self.silent = True
            self.record("silent", None, ms=quiet * 1000, exc=Silent(f"no move event for over {quiet:.0f} s"))

    def reconnect(self) -> None:
        """After a drop (ours or the network's): resume with what this player has seen."""
        self.sock = None
        self.resume_due = None
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
        self.last_event_at = time.time()
        for event, at, second in early:
            self.take_move(event, at, second)

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

    def move(self, now: float) -> None:
        """Send a move at Unix time ``now``: its ack is recorded when it comes, by the reader
        (:meth:`move_acked`), so nobody waits on it."""
        sock = self.sock
        assert sock is not None
        if self.moves_in_flight:
            self.expire_moves(sock, now)
        self.moves += 1
        action = {"t": now * 1000, "n": self.moves}
        try:
            ack_id = sock.emit_cb("move", {"room": self.room, "action": action}, self.move_acked)
        except Closed as exc:
            if sock is not self.cut_sock:
                self.record("move", None, ms=0.0, exc=Closed(str(exc)))
            return
        self.moves_in_flight[ack_id] = (now, sock)

    def move_acked(self, ack_id: int, ack: Any, exc: Exception | None, now: float) -> None:
        sent, sock = self.moves_in_flight.pop(ack_id, (now, None))
        ms = (now - sent) * 1000
        if exc is not None:
            if sock is not self.cut_sock:  # a cut on purpose (storm, --drop-at): neither success nor failure
                self.record("move", None, ms=ms, exc=Closed(str(exc) or type(exc).__name__))
        elif isinstance(ack, dict) and ack.get("ok"):
            MOVE_ACKS.add(ms, now, int(now))
        else:
            self.record("move", None, ms=ms, exc=AckError(_code(ack)))

    def expire_moves(self, sock: GameSocket, now: float) -> None:
        """Moves unanswered for the client's timeout fail as a timed-out wait did."""
        for ack_id, (sent, owner) in list(self.moves_in_flight.items()):
            if now - sent > sock.timeout_s:
                del self.moves_in_flight[ack_id]
                owner.forget(ack_id)
                self.record("move", None, ms=(now - sent) * 1000, exc=Closed("Timeout"))

    # -- server events (in the process's reactor greenlet, see .reactor) -----------------------

    def on_move(self, data: Any, now: float, second: int) -> None:
        """A ``move`` event, read at Unix time ``now`` (``second`` is ``int(now)``). (Reading its seq
        and send time out of the raw frame instead of parsing it with orjson measured no faster.)"""
        if self.joining and isinstance(data, dict):
            pending = self.joining.get(data.get("room"))  # type: ignore[arg-type]
            if pending is not None:
                pending.append((data, now, second))
                return
        self.take_move(data, now, second)

    def take_move(self, data: Any, now: float, second: int) -> None:
        """Check the event's seq and record its latency: in bulk when it is in order and live (nearly
        always), else through Locust's request event with its failure (see :mod:`.bulkstats`)."""
        try:  # the usual event: the next of a room this player is in, one of ours, live
            room, seq, sent = data["room"], data["seq"], data["action"]["t"]
            prev = self.last_seq[room]
        except (TypeError, KeyError):
            pass
        else:
            if seq == prev + 1 and type(seq) is int and type(sent) is float and sent >= self.replay_before_ms:
                self.last_seq[room] = seq
                self.last_event_at = now
                self.silent = False
                now_ms = now * 1000
                BROADCASTS.add(now_ms - sent if now_ms > sent else 0.0, now, second)
                return
        if not isinstance(data, dict):
            return
        room, seq = data.get("room"), data.get("seq")
        last = self.last_seq.get(room)  # type: ignore[arg-type]
        if last is None or not isinstance(seq, int):
            return  # a room this player has left
        self.last_event_at = now
        self.silent = False
        now_ms = now * 1000
        action = data.get("action")
        sent = action.get("t") if isinstance(action, dict) else None
        if not isinstance(sent, (int, float)):
            sent = now_ms  # not one of ours: no latency to tell
        latency = now_ms - sent if now_ms > sent else 0.0
        if seq == last + 1 and sent >= self.replay_before_ms:
            self.last_seq[room] = seq  # type: ignore[index]
            BROADCASTS.add(latency, now, second)
            return
        exc: Exception | None = None
        if seq != last + 1:
            exc = SeqError(f"gap: expected {last + 1}" if seq > last else "repeat")
        if seq > last:
            self.last_seq[room] = seq  # type: ignore[index]
        name = "replayed" if sent < self.replay_before_ms else "broadcast"
        self.record(name, None, ms=latency, exc=exc)

    def on_close(self, reason: Any) -> None:
        code = reason.get("reason") if isinstance(reason, dict) else str(reason)
        self.lost = reason
        self.record("lost", None, ms=0, exc=Lost(str(code)))
        if self.swarm.scenario == "idle":
            self.wake.set()  # it has no tick to notice: reconnect now


def _code(ack: Any) -> str:
    if isinstance(ack, dict) and isinstance(ack.get("error"), dict):
        return str(ack["error"].get("code", "error"))
    return "bad_ack"


# -- live progress for gamectl (master or standalone process only) ------------------------------

def _at_most(percentile: float | None, most: float) -> float | None:
    """Locust reads percentiles off its rounded buckets (21.6 ms counts as 22, 995 ms as 1000,
    see ``locust.stats``), while the max is exact: a percentile is never above the max."""
    return None if percentile is None else min(percentile, most)


class Rates:
    """Requests per second per name, from the counts of the last ``RATE_WINDOW_S`` seconds.

    Locust's ``current_rps`` leaves out the last two seconds and, on a master, the seconds its
    workers have not reported yet: for the first seconds of play it said 0 moves/s."""

    RATE_WINDOW_S = 2.0

    def __init__(self) -> None:
        self.history: list[tuple[float, dict[str, int]]] = []

    def update(self, now: float, counts: dict[str, int]) -> dict[str, float]:
        self.history.append((now, counts))
        while len(self.history) > 2 and now - self.history[1][0] >= self.RATE_WINDOW_S:
            self.history.pop(0)
        then, before = self.history[0]
        if now - then <= 0:
            return {name: 0.0 for name in counts}
        return {name: round(max(0, n - before.get(name, 0)) / (now - then), 1) for name, n in counts.items()}


def _entry(stats: Any, name: str) -> dict[str, Any]:
    entry = stats.entries.get((name, REQUEST_TYPE))
    if entry is None or not entry.num_requests:
        return {"count": 0, "failures": 0, "rps": 0.0, "p50": None, "p99": None}
    return {  # rps: see Rates
        "count": entry.num_requests,
        "failures": entry.num_failures,
        "p50": entry.get_current_response_time_percentile(0.5),
        "p99": entry.get_current_response_time_percentile(0.99),
    }


WINDOW_NAMES = ("connect", "join", "leave", "move", "broadcast", "drop", "resume", "recovery", "replayed", "lost",
                "silent")


class Windows:
    """Exact percentiles per window of the run (see the module docstring): each window is the
    difference between two snapshots of Locust's cumulative per-name response-time tables."""

    # the window before a drop ends this much before it, so that no player's cut (they wake up
    # for it at the same moment as this writer) falls in it
    DROP_LEAD_S = 0.02

    def __init__(self, environment: Environment, length_s: float, origin: float, drop_at: float) -> None:
        self.environment = environment
        self.length_s = max(1.0, length_s)
        now = time.time()
        self.origin = origin if origin > 0 else now
        self.drop_at = drop_at if drop_at > now else 0.0
        self.index = 0 if self.origin > now else 1
        self.start = now if self.origin > now else self.origin
        self.records: list[dict[str, Any]] = []
        self.snapshot = self._snapshot()
        self.next_cut = self._next_cut()

    def _next_cut(self) -> float:
        if self.index == 0:
            cut = self.origin
        else:
            cut = self.start + self.length_s
        if self.drop_at and self.start < self.drop_at - self.DROP_LEAD_S < cut:
            cut = self.drop_at - self.DROP_LEAD_S
        return cut

    def _snapshot(self) -> dict[str, tuple[dict[int, int], int, int]]:
        out = {}
        for name in WINDOW_NAMES:
            entry = self.environment.stats.entries.get((name, REQUEST_TYPE))
            if entry is not None:
                out[name] = (dict(entry.response_times), entry.num_requests, entry.num_failures)
        return out

    def due(self) -> bool:
        return time.time() >= self.next_cut

    def close(self, partial: bool = False) -> dict[str, Any]:
        """End the current window now and return its record (also kept in ``records``)."""
        now = time.time()
        snap = self._snapshot()
        names: dict[str, Any] = {}
        for name, (times, count, failures) in snap.items():
            old_times, old_count, old_failures = self.snapshot.get(name, ({}, 0, 0))
            diff = {k: v - old_times.get(k, 0) for k, v in times.items() if v > old_times.get(k, 0)}
            n = count - old_count
            if n <= 0 and failures == old_failures:
                continue
            timed = sum(diff.values())
            names[name] = {
                "count": n, "failures": failures - old_failures,
                "p50": calculate_response_time_percentile(diff, timed, 0.5) if timed else None,
                "p90": calculate_response_time_percentile(diff, timed, 0.9) if timed else None,
                "p99": calculate_response_time_percentile(diff, timed, 0.99) if timed else None,
                "max": max(diff) if diff else None,
            }
        record = {"index": self.index, "from": round(self.start, 3), "to": round(now, 3),
                  "seconds": round(now - self.start, 3),
                  "after_drop": bool(self.drop_at) and self.start >= self.drop_at - self.DROP_LEAD_S - 0.001,
                  "partial": partial, "names": names}
        self.records.append(record)
        self.snapshot, self.start, self.index = snap, now, self.index + 1
        self.next_cut = self._next_cut()
        return record


_windows: Windows | None = None
_progress: gevent.Greenlet | None = None
_starts = 0  # test starts in this process: one headless, one per start from the web UI
_peak_users = 0  # the most players spawned since the last start (the web UI can grow and shrink the swarm)
_started_at = _stopped_at = 0.0  # Unix time of the last start and of its stop (0: still running)


def _progress_loop(environment: Environment, path: str) -> None:
    global _windows
    opts = environment.parsed_options
    windows: Windows | None = None
    rates = Rates()
    seen = 0
    with open(path, "ab", buffering=0) as out:
        next_line = time.monotonic()
        while True:
            if seen != _starts or windows is None:
                # a new start from the web UI: Locust has cleared its statistics, so the windows
                # and rates start again too (the one writer carries on: lines never interleave)
                seen = _starts
                windows = _windows = Windows(environment, float(getattr(opts, "window_s", 60.0) or 60.0),
                                             float(getattr(opts, "window_origin", 0.0) or 0.0),
                                             float(getattr(opts, "drop_at", 0.0) or 0.0))
                rates = Rates()
            # a line every second, and one at each window's end (which carries the window)
            wait = min(next_line - time.monotonic(), windows.next_cut - time.time())
            if wait > 0:
                gevent.sleep(wait)
            flush()
            window = windows.close() if windows.due() else None
            if window is None and time.monotonic() < next_line:
                continue
            if time.monotonic() >= next_line:
                next_line = max(next_line + 1.0, time.monotonic() - 1.0)
            runner = environment.runner
            stats = environment.stats
            now = time.time()
            names = {name: _entry(stats, name) for name in ("connect", "join", "move", "broadcast", "resume",
                                                            "replayed", "leave", "lost", "drop", "recovery", "silent")}
            rps = rates.update(now, {name: e["count"] for name, e in names.items()})
            for name, entry in names.items():
                entry["rps"] = rps[name]
            line: dict[str, Any] = {
                "t": now,
                "starts": seen,
                "state": runner.state if runner else "",
                "users": runner.user_count if runner else 0,
                "peak_users": max(_peak_users, runner.user_count if runner else 0),
                "workers": len(runner.clients.ready + runner.clients.running + runner.clients.spawning)
                if isinstance(runner, MasterRunner) else None,
                "requests": stats.total.num_requests,
                "failures": stats.total.num_failures,
                "names": names,
            }
            if window is not None:
                line["minute"] = window
            out.write(orjson.dumps(line) + b"\n")


@events.test_start.add_listener
def _baseline(environment: Environment, **_: Any) -> None:
    """This process's CPU time and RSS before its first player (every process: the master or
    standalone one, and each worker when its spawning begins), for ``gamectl loadtest``'s figures
    per player. Read from outside, once the progress shows the test running, the baseline already
    held the players spawned meanwhile: with a fast spawn, RSS per player came out near 0."""
    folder = os.environ.get("GAMEGW_LT_BASELINE_DIR", "")
    if not folder:
        return
    pid = os.getpid()
    path = Path(folder) / f"baseline-{pid}.json"
    if path.exists():  # once per run
        return
    # what the first player would import (its token's signing code, the settings): part of the
    # process, not of its players
    import gamegw.server.auth.tokens
    import gamegw.server.config  # noqa: F401

    scratch = path.with_suffix(".tmp")
    scratch.write_bytes(orjson.dumps({"pid": pid, "cpu_ms": cpu_ms([pid]), "rss_kb": rss_kb([pid])}))
    scratch.replace(path)


@events.test_start.add_listener
def _start_progress(environment: Environment, **_: Any) -> None:
    """One progress writer per process, from the first start; the web UI can start the swarm
    again after a stop, which only counts the start (``"starts"`` in each line)."""
    global _progress, _starts, _peak_users, _started_at, _stopped_at
    path = getattr(environment.parsed_options, "progress_file", "") if environment.parsed_options else ""
    if path and not isinstance(environment.runner, WorkerRunner):
        _starts += 1
        _peak_users, _started_at, _stopped_at = 0, time.time(), 0.0
        if _progress is None:
            _progress = gevent.spawn(_progress_loop, environment, path)


_flushing: gevent.Greenlet | None = None


@events.test_start.add_listener
def _start_flushing(environment: Environment, **_: Any) -> None:
    """Locust has just cleared its statistics for this start: what was held belongs to none."""
    global _flushing
    BULK.drop()
    if _flushing is None and not isinstance(environment.runner, MasterRunner):
        _flushing = gevent.spawn(_flusher)


@events.spawning_complete.add_listener
def _count_peak(user_count: int, **_: Any) -> None:
    """Between two progress lines the page can grow the swarm and stop it again: count each
    spawn's target (on a master, once its workers report it)."""
    global _peak_users
    _peak_users = max(_peak_users, user_count)


@events.test_stop.add_listener
def _stopped(environment: Environment, **_: Any) -> None:
    global _stopped_at
    flush()
    if not isinstance(environment.runner, WorkerRunner) and _started_at and not _stopped_at:
        _stopped_at = time.time()


@events.quitting.add_listener
def _final_stats(environment: Environment, **_: Any) -> None:
    """Write the run's totals as the progress file's last line: ``{"final": {...}}``."""
    path = getattr(environment.parsed_options, "progress_file", "") if environment.parsed_options else ""
    if not path or isinstance(environment.runner, WorkerRunner):
        return
    # Locust can fire ``quitting`` while players are still finishing their last step (the
    # run-time limit and the shutdown both stop the runner): wait for them, within the stop timeout.
    runner = environment.runner
    if runner is not None and runner.state in (runners.STATE_SPAWNING, runners.STATE_RUNNING):
        # Ctrl-C or SIGTERM with the web UI, in one process: Locust fires ``quitting`` before it
        # stops the players, so the totals would miss what they do after it. Stop them first. (A
        # master has quit its workers by now: its runner's own ``quitting`` listener runs first.)
        runner.stop()
    deadline = time.monotonic() + (environment.stop_timeout or 0) + 2
    while runner is not None and runner.user_count > 0 and time.monotonic() < deadline:
        gevent.sleep(0.05)
    flush()
    if getattr(environment.parsed_options, "csv_prefix", None):
        # Locust's CSV writer rewrites the files every second and only closes them at exit: one
        # more round makes the CSV hold the final figures, as this summary does.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)
    stats = environment.stats
    names: dict[str, Any] = {}
    for (name, method), entry in stats.entries.items():
        if method != REQUEST_TYPE:
            continue
        most = round(entry.max_response_time or 0, 1)
        names[name] = {
            "count": entry.num_requests,
            "failures": entry.num_failures,
            "rps": round(entry.total_rps, 2),
            "avg": round(entry.avg_response_time, 1),
            **{f"p{round(q * 100)}": _at_most(entry.get_response_time_percentile(q), most) for q in (0.5, 0.9, 0.99)},
            "max": most,
        }
    errors: list[dict[str, Any]] = [{"name": e.name, "error": str(e.error), "occurrences": e.occurrences}
              for e in stats.errors.values()]
    final = {
        "names": names,
        "requests": stats.total.num_requests,
        "failures": stats.total.num_failures,
        "errors": sorted(errors, key=lambda e: -e["occurrences"]),
        "peak_users": _peak_users,
        # the last start, until its players stopped (the web UI can stop a swarm long before the end)
        "started_at": _started_at or None,
        "stopped_at": _stopped_at or None,
        "start": stats.total.start_time,
        "end": stats.total.last_request_timestamp,
    }
    if _windows is not None:
        final["minutes"] = [*_windows.records, _windows.close(partial=True)]
    with open(path, "ab") as out:
        out.write(orjson.dumps({"final": final}) + b"\n")
