"""Latencies handed to Locust's statistics in bulk, with nothing sampled away.

Each player receives ``room size x move rate`` broadcasts a second. Recording each one as a
Locust ``request`` event ran Locust's whole path per event (the event hook, then the request's
entry and the total, each updating its counters, its per-second table and its response-time
buckets): the largest single cost of a worker after reading sockets. Here a broadcast's latency
is one ``list.append``; once per interval (before each worker report, and every
``FLUSH_S`` in a process without a master) the latencies of each second become one
:class:`~locust.stats.StatsEntry`, built exactly as Locust's ``log`` builds one (the same
buckets, through :func:`locust.stats.bucket_response_time`; the same sum, minimum, maximum and
requests per second), and Locust merges it into the name's entry and the total with its own
``extend``, as a master merges a worker's report. Failures are not batched: they go through the
request event, with their exception, one by one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from locust import stats as locust_stats
from locust.stats import RequestStats, StatsEntry

_LOCUST_BUCKET = locust_stats.bucket_response_time


class Latencies:
    """The successful latencies (ms) of one request name, by the second they were taken."""

    __slots__ = ("current", "done", "last", "method", "name", "second")

    def __init__(self, name: str, method: str) -> None:
        self.name, self.method = name, method
        self.second = 0
        self.last = 0.0  # Unix time of the latest latency
        self.current: list[float] = []
        self.done: list[tuple[int, list[float]]] = []

    def add(self, ms: float, now: float, second: int) -> None:
        """One latency taken at Unix time ``now`` (``second`` is ``int(now)``, which the caller
        reads once for all it hands over at that moment)."""
        self.last = now
        if second != self.second:
            if self.current:
                self.done.append((self.second, self.current))
                self.current = []
            self.second = second
        self.current.append(ms)

    def __len__(self) -> int:
        return len(self.current) + sum(len(batch) for _, batch in self.done)

    def take(self) -> list[tuple[int, list[float]]]:
        """Everything held so far, by second, and forget it."""
        out = self.done
        if self.current:
            out.append((self.second, self.current))
        self.done, self.current = [], []
        return out

    def entry(self, stats: RequestStats) -> StatsEntry | None:
        """What Locust's ``log`` would have made of these latencies, as one entry (None: none held)."""
        batches = self.take()
        if not batches:
            return None
        bucket = locust_stats.bucket_response_time  # looked up now: Locust lets a run replace it
        out = StatsEntry(stats, self.name, self.method)
        out.start_time = float(batches[0][0])
        total = 0.0
        low: float | None = None
        high = 0.0
        times: Counter[int] = Counter()
        for second, values in batches:
            out.num_reqs_per_sec[second] += len(values)
            out.num_requests += len(values)
            for v in values:  # in order, as log() adds them
                total += v
            least, most = min(values), max(values)
            low = least if low is None else min(low, least)
            high = max(high, most)
            if bucket is _LOCUST_BUCKET and most < 100:  # Locust's own buckets below 100 ms: round()
                times.update(map(round, values))
            else:
                times.update(map(bucket, values))
        out.total_response_time = total  # type: ignore[assignment]
        out.min_response_time = low  # type: ignore[assignment]
        out.max_response_time = high  # type: ignore[assignment]
        out.response_times.update(times)
        out.last_request_timestamp = self.last
        return out


class BulkStats:
    """The latencies of one process waiting for their next flush into Locust's statistics."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.names: dict[str, Latencies] = {}

    def latencies(self, name: str) -> Latencies:
        held = self.names.get(name)
        if held is None:
            held = self.names[name] = Latencies(name, self.method)
        return held

    def flush(self, stats: RequestStats) -> int:
        """Merge every held latency into ``stats`` (its name's entry and the total); returns how many."""
        merged = 0
        for name, held in self.names.items():
            batch = held.entry(stats)
            if batch is None:
                continue
            stats.get(name, self.method).extend(batch)
            stats.total.extend(batch)
            merged += batch.num_requests
        return merged

    def drop(self) -> None:
        """Forget what is held (Locust has just cleared its statistics for a new start)."""
        for held in self.names.values():
            held.take()

    def pending(self) -> dict[str, Any]:
        return {name: len(held) for name, held in self.names.items()}
