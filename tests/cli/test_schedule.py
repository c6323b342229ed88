"""The players' shared timer (gamectl/players/schedule.py, run by the reactor) and the client's
sends that never block (gamectl/players/sioclient.py): both run in the one greenlet that plays
every player of a process, so a late entry or a full socket buffer would hold up everyone.

They run under gevent (inside Locust), so the check runs in a subprocess of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    from gevent import monkey; monkey.patch_all()
    import json, socket, sys, time
    import gevent
    sys.path.insert(0, sys.argv[1])
    from gamegw.gamectl.players.reactor import reactor
    from gamegw.gamectl.players.sioclient import GameSocket

    out = {}
    schedule, ran = reactor().schedule, []
    t0 = time.monotonic()

    def note(token):
        ran.append((token, time.monotonic() - t0))

    def fail(token):
        raise RuntimeError("entry failed")

    schedule.at(t0 + 0.40, note, 3)
    gevent.sleep(0.05)  # the schedule now sleeps until 0.40 ...
    schedule.at(t0 + 0.15, note, 1)  # ... and an earlier entry must wake it
    schedule.at(t0 + 0.25, fail, 0)
    schedule.at(t0 + 0.25, note, 2)
    gevent.sleep(0.6)
    out["ran"] = ran

    a, b = socket.socketpair()
    client = GameSocket("http://127.0.0.1:1")
    client._sock = a  # a connected socket whose peer reads nothing yet
    chunks = [bytes([i % 251]) * 1000 for i in range(3000)]  # 3 MB: more than the buffers hold
    started = time.monotonic()
    for chunk in chunks:
        client._send(chunk)
    out["send_s"] = time.monotonic() - started
    out["queued"] = client._outbox is not None
    got = bytearray()
    while len(got) < 3000 * 1000:
        got += b.recv(65536)
    out["in_order"] = bytes(got) == b"".join(chunks)
    gevent.sleep(0.05)
    out["drained"] = client._outbox is None
    print(json.dumps(out))
''')


def test_schedule_runs_entries_on_time_and_sends_never_block() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    tokens = [token for token, _ in out["ran"]]
    assert tokens == [1, 2, 3]  # in due order; the failing entry stopped nobody
    at = {token: t for token, t in out["ran"]}
    assert 0.15 <= at[1] < 0.35  # woken for the earlier entry, not at 0.40
    assert 0.25 <= at[2] < 0.40
    assert at[3] >= 0.40
    assert "scheduled call failed" in done.stderr and "entry failed" in done.stderr
    # 3 MB into a socket nobody reads: every send returned at once, the rest queued in order
    assert out["queued"] is True
    assert out["send_s"] < 1.0
    assert out["in_order"] is True
    assert out["drained"] is True
