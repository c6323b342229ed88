"""Prometheus metrics, in a registry of the app's own (no global state, one per gateway), and
:class:`Sampler`, which turns them (and the process's CPU and memory) into figures per second."""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from .guard.limits import Limit

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._event_children: dict[str, tuple[Any, Any]] = {}
        self._ack_children: dict[tuple[str, str], Any] = {}
        r = self.registry
        ProcessCollector(registry=r)
        self.connections = Gauge("gamegw_connections", "Live Socket.IO connections on /game", registry=r)
        self.connects = Counter("gamegw_connects", "Accepted connections", registry=r)
        self.refusals = Counter("gamegw_refusals", "Refused handshakes by code", ["code"], registry=r)
        self.disconnects = Counter("gamegw_disconnects", "Ended connections by reason", ["reason"], registry=r)
        self.events = Counter("gamegw_events", "Client events received, by name", ["event"], registry=r)
        self.acks = Counter("gamegw_acks", "Acks sent, by event and result (ok or error code)",
                            ["event", "result"], registry=r)
        self.handler_seconds = Histogram("gamegw_handler_seconds", "Event handler latency", ["event"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.drops = Counter("gamegw_drops", "Connections that dropped (session kept in grace), by cause",
                             ["cause"], registry=r)
        self.resumes = Counter("gamegw_resumes", "Reconnects of a user with a dropped session: resumed, or "
                               "too_late (grace was over)", ["result"], registry=r)
        self.resume_seconds = Histogram("gamegw_resume_seconds", "Time from drop to resume", registry=r,
                                        buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.grace_expiries = Counter("gamegw_grace_expiries", "Sessions whose grace ran out", registry=r)
        self.replayed = Counter("gamegw_replayed_moves", "Moves replayed to resuming clients", registry=r)
        self.probe_failures = Counter("gamegw_bus_probe_failures", "Loopback probes through the pub/sub "
                                      "listener that did not come back in time", registry=r)
        self.listener_restarts = Counter("gamegw_listener_restarts", "Pub/sub listeners restarted because "
                                         "they went deaf", registry=r)
        self.moves = Counter("gamegw_moves", "Moves accepted", registry=r)
        self.published = Counter("gamegw_published_moves", "Server events published to rooms as moves "
                                 "(POST /admin/publish; not counted in gamegw_moves)", registry=r)
        self.ticked_moves = Counter("gamegw_ticked_moves", "Moves a ticking game made in the rooms this "
                                    "instance ticks (not in gamegw_moves)", registry=r)
        self.tick_leases = Gauge("gamegw_tick_leases", "Rooms this instance ticks (holds the tick lease of)",
                                 registry=r)
        self.offline_moves = Counter("gamegw_offline_moves", "Moves accepted while Redis was away (rooms "
                                     "with members on this instance only)", registry=r)
        self.move_gaps = Counter("gamegw_move_gaps", "Moves that arrived out of order and waited for the "
                                 "missing ones to be read from the room's log", registry=r)
        self.moves_missing = Counter("gamegw_moves_missing", "Moves neither pub/sub nor the log could "
                                     "deliver here", registry=r)
        self.duplicate_moves = Counter("gamegw_duplicate_moves", "Moves dropped because they had been "
                                       "delivered here already", registry=r)
        self.recoveries = Counter("gamegw_redis_recoveries", "Times this instance re-asserted its state "
                                  "after losing Redis", registry=r)
        self.moves_lost = Counter("gamegw_moves_lost", "Moves given out or delivered here that Redis no longer "
                                  "had when this instance re-asserted its rooms (a failover lost them)", registry=r)
        self.redis_changes = Counter("gamegw_redis_server_changes", "Times a connection found another Redis "
                                     "server than before (a failover, a restart)", registry=r)
        self.wait_short = Counter("gamegw_redis_wait_short", "Moves whose WAIT (redis_wait_replicas) timed out "
                                  "before enough replicas had them", registry=r)
        self.deliveries = Counter("gamegw_deliveries", "move events sent to players", registry=r)
        self.limit_hits = Counter("gamegw_limit_hits", "Times a limit was hit, by limit", ["limit"], registry=r)
        self._limit_children = {limit: self.limit_hits.labels(str(limit)) for limit in Limit}
        self.bad_packets = Counter("gamegw_bad_packets", "Packets that were not Socket.IO; their connection was "
                                   "closed with 4400", registry=r)
        self.hook_calls = Counter("gamegw_hook_calls", "Backend hook calls by event and result: ok, veto, "
                                  "timeout, error (down or a bad answer), open (not called: breaker open)",
                                  ["event", "result"], registry=r)
        self.hook_seconds = Histogram("gamegw_hook_seconds", "Backend hook latency (failed calls included)",
                                      ["event"], buckets=LATENCY_BUCKETS, registry=r)
        self.hook_breaker_open = Gauge("gamegw_hook_breaker_open", "1 while the hook's circuit breaker is open",
                                       registry=r)
        self.hook_breaker_opens = Counter("gamegw_hook_breaker_opens", "Times the hook's circuit breaker opened",
                                          registry=r)
        self.transports = Gauge("gamegw_transports", "Open Engine.IO sessions, whether or not they joined /game",
                                registry=r)

    def hit(self, limit: Limit) -> None:
        self._limit_children[limit].inc()

    def for_event(self, event: str) -> tuple[Any, Any]:
        """The event's counter and latency children; ``labels()`` is a lookup per call, so the
        hot path keeps the children it has already asked for."""
        children = self._event_children.get(event)
        if children is None:
            children = self._event_children[event] = (self.events.labels(event),
                                                      self.handler_seconds.labels(event))
        return children

    def ack(self, event: str, result: str) -> Any:
        child = self._ack_children.get((event, result))
        if child is None:
            child = self._ack_children[(event, result)] = self.acks.labels(event, result)
        return child

    def render(self) -> bytes:
        return generate_latest(self.registry)


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """This process's resident memory now (``/proc/self/statm``); elsewhere its peak."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Sampler:
    """Figures between one call and the next: the process's CPU (percent of one core) and the
    gateway's rates. Each caller keeps a sampler of its own (the heartbeat, the dashboard's
    feed), so that each one's window is its own interval."""

    def __init__(self, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self._metrics = metrics
        self._clock = clock
        self._cpu = cpu
        self._cpu_at = (clock(), cpu())
        self._rates_at = (clock(), self._counts())

    def process(self) -> dict[str, Any]:
        """``{"cpu_pct", "rss_bytes"}``: CPU since the last call, memory now."""
        now, cpu = self._clock(), self._cpu()
        then, cpu_then = self._cpu_at
        self._cpu_at = (now, cpu)
        pct = 100.0 * (cpu - cpu_then) / (now - then) if now > then else 0.0
        return {"cpu_pct": round(max(0.0, pct), 1), "rss_bytes": rss_bytes()}

    def rates(self) -> dict[str, Any]:
        """``{"connects_s", "moves_s", "deliveries_s", "move_p99_ms"}`` since the last call;
        ``move_p99_ms`` is the upper bound of the latency bucket holding the 99th percentile of
        the moves handled meanwhile (None without moves; the last finite bound past it)."""
        now, counts = self._clock(), self._counts()
        then, before = self._rates_at
        self._rates_at = (now, counts)
        span = max(now - then, 1e-9)
        out: dict[str, Any] = {name: round((counts[name] - before[name]) / span, 2)
                               for name in ("connects", "moves", "deliveries")}
        out = {f"{name}_s": value for name, value in out.items()}
        out["move_p99_ms"] = p99_ms(before["move_buckets"], counts["move_buckets"])
        return out

    def _counts(self) -> dict[str, Any]:
        m = self._metrics
        return {"connects": _total(m.connects), "moves": _total(m.moves), "deliveries": _total(m.deliveries),
                "move_buckets": _buckets(m.handler_seconds, "move")}


def _total(counter: Counter) -> float:
    return sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total"))


def _buckets(histogram: Histogram, event: str) -> list[tuple[float, float]]:
    """The cumulative ``(le, count)`` buckets of one event's latency."""
    return [(float(s.labels["le"]), s.value) for metric in histogram.collect() for s in metric.samples
            if s.name.endswith("_bucket") and s.labels.get("event") == event]


def p99_ms(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """The 99th percentile, in ms, of what the cumulative buckets gained from ``before`` to ``after``."""
    was = dict(before)
    gained = [(le, count - was.get(le, 0.0)) for le, count in after]
    total = gained[-1][1] if gained else 0.0
    if total <= 0:
        return None
    finite = [le for le, _ in gained if not math.isinf(le)]
    for le, count in gained:
        if count >= 0.99 * total:
            return round(1000 * (finite[-1] if math.isinf(le) else le), 3)
    return None  # pragma: no cover - the +Inf bucket holds everything
