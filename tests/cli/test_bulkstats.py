"""Latencies handed to Locust in bulk (gamectl/players/bulkstats.py) make the same statistics
as the same latencies logged one request at a time: counts, buckets, per-second counts, the
minimum and maximum, and so every percentile Locust reports.

Locust monkey-patches the process with gevent when imported, so the comparison runs in a
subprocess of its own and prints what it found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import json, random, sys
    sys.path.insert(0, sys.argv[1])
    import locust.stats as ls
    from locust.stats import RequestStats
    from gamegw.gamectl.players.bulkstats import BulkStats

    rng = random.Random(20)
    start = 1_764_000_000.25
    # three intervals of latencies over several seconds, with the bucket edges in them
    edges = [0.0, 0.49, 0.5, 1.5, 2.5, 99.4, 99.5, 100.0, 104.9, 105.0, 999.0, 1000.0, 1049.0, 12_345.6]
    intervals = []
    t = start
    # first an interval of seconds all under 100 ms (the usual case on one machine: Locust's buckets
    # there are round()'s, which the bulk path then calls directly)
    low_edges = [0.0, 0.5, 1.5, 2.5, 49.5, 98.5, 99.49]
    batch = []
    for i in range(900):
        t += rng.uniform(0, 0.01)
        batch.append((low_edges[i] if i < len(low_edges) else rng.uniform(0, 99.9), t))
    intervals.append(batch)
    for n in (500, 1, 1200):
        batch = []
        for i in range(n):
            t += rng.uniform(0, 0.01)
            ms = edges[i] if i < len(edges) and n > 1 else rng.expovariate(1 / 40) if i % 7 else rng.uniform(0, 3000)
            batch.append((ms, t))
        intervals.append(batch)

    class Clock:
        now = 0.0
        def time(self):
            return self.now
    clock = Clock()
    ls.time = clock  # Locust's log() reads time.time(): the moment each latency was taken

    one_by_one = RequestStats()
    bulk_stats = RequestStats()
    bulk = BulkStats("sio")
    for batch in intervals:
        for ms, at in batch:
            clock.now = at
            one_by_one.log_request("sio", "broadcast", ms, 0)
            bulk.latencies("broadcast").add(ms, at, int(at))
        clock.now = batch[-1][1]
        merged = bulk.flush(bulk_stats)
        assert merged == len(batch), (merged, len(batch))
    assert bulk.flush(bulk_stats) == 0  # nothing held twice

    def figures(entry):
        return {
            "num_requests": entry.num_requests, "num_failures": entry.num_failures,
            "response_times": sorted(entry.response_times.items()),
            "num_reqs_per_sec": sorted(entry.num_reqs_per_sec.items()),
            "min": entry.min_response_time, "max": entry.max_response_time,
            "total": entry.total_response_time, "last": entry.last_request_timestamp,
            "percentiles": [entry.get_response_time_percentile(q) for q in (0.5, 0.9, 0.95, 0.99, 0.999, 1.0)],
            "current_p50": entry.get_current_response_time_percentile(0.5),
        }

    print(json.dumps({
        "one_by_one": figures(one_by_one.get("broadcast", "sio")), "bulk": figures(bulk_stats.get("broadcast", "sio")),
        "one_by_one_total": figures(one_by_one.total), "bulk_total": figures(bulk_stats.total),
        "count": sum(len(b) for b in intervals),
    }))
''')


def test_bulk_latencies_make_the_statistics_one_by_one_logging_makes() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["count"] == 2601
    for entry, ref in (("bulk", "one_by_one"), ("bulk_total", "one_by_one_total")):
        bulk, exact = got[entry], got[ref]
        assert bulk["num_requests"] == exact["num_requests"] == 2601
        # the sum of floats, added in another order: equal to rounding
        assert abs(bulk.pop("total") - exact.pop("total")) < 1e-6 * exact["num_requests"]
        # the "current" p50 reads a snapshot of the buckets taken as a second turns: one by one, at the
        # first latency of each second; merged, at each flush (as on a master merging its workers'
        # reports, which Locust calls an approximation). Everything else is exact.
        assert abs(bulk.pop("current_p50") - exact.pop("current_p50")) <= 1
        assert bulk == exact
    assert got["bulk"]["num_failures"] == 0
    assert len(got["bulk"]["num_reqs_per_sec"]) == 14  # the latencies spread over fourteen seconds
