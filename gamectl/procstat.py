"""CPU and memory of processes, read from ``/proc`` (Linux): what ``gamectl loadtest`` reports
for the gateway it measures, and what the benchmarks in ``loadtests/`` use too."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ms(pids: list[int]) -> float:
    """user + system CPU time of the processes, in ms (a process that is gone counts 0)."""
    return sum(cpu_split_ms(pids))


def cpu_split_ms(pids: list[int]) -> tuple[float, float]:
    """user and system CPU time of the processes, in ms (a process that is gone counts 0)."""
    user = system = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) * 1000 / TICKS
            system += int(fields[12]) * 1000 / TICKS
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def rss_kb(pids: list[int]) -> int:
    """resident memory of the processes, in KB (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
