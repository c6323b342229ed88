"""``loadtests/bench_failover.py`` runs end to end with a few players: the master of its
Sentinel deployment dies mid-run, play comes back, and the figures it prints say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(200)
def test_bench_failover_with_a_few_players() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAMEGW_")}
    run = subprocess.run([sys.executable, "loadtests/bench_failover.py", "--players", "20", "--spawn-rate", "20",
                          "--seconds", "12", "--kill-at", "3"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = json.loads(run.stdout.splitlines()[0])
    assert row["players"] == 20 and row["seq_repeats"] == 0 and row["resume_failures"] == 0, row
    assert 0 < row["failover_s"] < 15 and row["acked_again_s"] is not None and row["acked_again_s"] > 0, row
    assert row["redis_server_changes"] == 2, row  # each gateway found the promoted replica once
    assert row["moves_acked"] > 0 and row["resumed"] == row["disconnected"], row
