"""The README's side-by-side figures can be reproduced from a clone: ``loadtests/peer_bench.sh``
runs the project's copy of peer-bench (``loadtests/peer-bench``: the Node reference server, the
official-client load generator, the runner), and the copy is the shipped one, unchanged.

A short run only (40 players, 3 s): what is checked is that every part works from the clone,
both modes, and that the candidates deliver everything; the figures themselves are measured
on a quiet machine, not in a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
COPY = REPO / "loadtests" / "peer-bench"
SHIPPED = REPO.parent / "shared" / "peer-bench"


def peer_bench(mode: str, **env_vars: str) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:
    """``peer_bench.sh MODE --clients 40 --seconds 3`` from the clone's copy, in an environment
    without our variables; it must exit 0. Returns the run and its JSON rows by candidate."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAMEGW_", "REDIS", "SENTINEL"))}
    env.update(PEER_BENCH_DIR="loadtests/peer-bench", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               **env_vars)
    run = subprocess.run(["bash", "loadtests/peer_bench.sh", mode, "--clients", "40", "--seconds", "3"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {row["name"]: row for row in (json.loads(line) for line in run.stdout.splitlines()
                                          if line.startswith("{"))}
    return run, rows


def test_the_copy_is_the_shipped_peer_bench() -> None:
    files = sorted(p.relative_to(COPY) for p in COPY.rglob("*") if p.is_file())
    assert {Path("run"), Path("node/reference_server.js"), Path("node/loadgen.js")} <= set(files)
    assert os.access(COPY / "run", os.X_OK)
    if not SHIPPED.is_dir():  # CI's clone may sit anywhere: then the copy is all there is
        return
    assert files == sorted(p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file())
    assert all((COPY / f).read_bytes() == (SHIPPED / f).read_bytes() for f in files)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["single", "cluster"])
def test_peer_bench_runs_from_the_clone(mode: str, tmp_path: Path) -> None:
    run, rows = peer_bench(mode, BARE="0")
    assert set(rows) == {"node", "gateway"}, run.stdout
    for row in rows.values():
        assert row["delivery_ratio"] == 1, row
    assert rows["gateway"]["seq_gaps"] == 0
    table = run.stdout.split("\ncandidate", 1)[1].splitlines()
    assert [line.split()[0] for line in table[1:] if line.strip()] == ["node", "gateway"]
    assert "(1.00x)" in table[1]  # the ratios are to the first candidate, Node


@pytest.mark.timeout(300)
def test_peer_bench_hooks_mode_asks_a_local_hook(tmp_path: Path) -> None:
    """``peer_bench.sh hooks``: the Node reference, the gateway without a hook, then with loadtests/hook_server.py on
    every move; with hooks_on_error at its default (deny), a hook that was not reached would
    show as ack errors. The hook server is gone afterwards."""
    run, rows = peer_bench("hooks")
    assert set(rows) == {"node", "nohook", "hook"}, run.stdout  # Node's figure beside every ratio
    for row in rows.values():
        assert row["delivery_ratio"] == 1 and row["ack_errors"] == 0 and row["moves_acked"] > 0, row
    left = subprocess.run(["pgrep", "-f", "loadtests/hook_server.py"], capture_output=True, text=True)
    assert left.stdout == "", "the hook server outlived the run"


@pytest.mark.timeout(300)
def test_peer_bench_sentinel_mode_runs_the_cluster_case_over_sentinel(tmp_path: Path) -> None:
    """``peer_bench.sh sentinel``: two instances straight to the master, then through three
    sentinels, then through them with ``GAMEGW_REDIS_WAIT_REPLICAS=1``; each delivers everything."""
    run, rows = peer_bench("sentinel")
    assert list(rows) == ["direct", "sentinel", "wait1"], run.stdout
    for row in rows.values():
        assert row["delivery_ratio"] == 1 and row["ack_errors"] == 0 and row["seq_gaps"] == 0, row
        assert row["moves_acked"] == row["moves_sent"] > 0, row


@pytest.mark.timeout(300)
def test_peer_bench_rcluster_mode_runs_over_one_redis_then_a_redis_cluster() -> None:
    """``peer_bench.sh rcluster``: the gateway's cluster case over one Redis, then over a
    three-master Redis Cluster the script makes, in one run; every move delivered, in order."""
    run, rows = peer_bench("rcluster")
    assert set(rows) == {"node", "one", "rcluster"}, run.stdout
    for name in ("one", "rcluster"):
        assert rows[name]["instances"] == 2 and rows[name]["delivery_ratio"] == 1, rows[name]
        assert rows[name]["seq_gaps"] == 0 and rows[name]["ack_errors"] == 0, rows[name]
