"""Test the mutants mutmut 2 left untested in a module, one by one, and record them in its cache.

    .venv/bin/python tools/mutation/untested.py MODULE "TEST COMMAND"

mutmut 2 runs only the first of the mutants that lines of the same text share (``r =
self._rooms.get(room)`` in five methods: its cache tells them apart, its run does not); the
others stay untested. This applies each such mutant with mutmut's own ``mutate``, runs the test
command (any failure catches it; ten times the unmutated run's time is a timeout) and puts the
original back, whatever happens.
"""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from mutmut import Context, RelativeMutationID, mutate  # type: ignore[import-untyped]

QUERY = ('SELECT m.id, m."index", l.line, l.line_number FROM Mutant m JOIN Line l ON m.line = l.id'
         " JOIN SourceFile s ON l.sourcefile = s.id WHERE s.filename = ? AND m.status = 'untested'")


def run(command: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return "bad_timeout"
    return "bad_survived" if done.returncode == 0 else "ok_killed"


def main() -> int:
    module, command = sys.argv[1], shlex.split(sys.argv[2])
    db = sqlite3.connect(".mutmut-cache")
    rows = list(db.execute(QUERY, (module,)))
    if not rows:
        return 0
    path = Path(module)
    source = path.read_text()
    started = time.monotonic()
    if run(command, 600) != "bad_survived":
        print(f"untested.py: the tests fail on the unmutated {module}", file=sys.stderr)
        return 1
    timeout = 10 * (time.monotonic() - started)
    for mutant_id, index, line, number in rows:
        mutation = RelativeMutationID(line=line, index=index, line_number=number, filename=module)
        mutated, count = mutate(Context(source=source, mutation_id=mutation, filename=module))
        if count != 1:
            continue
        try:
            path.write_text(mutated)
            status = run(command, timeout)
        finally:
            path.write_text(source)
        db.execute("UPDATE Mutant SET status = ? WHERE id = ?", (status, mutant_id))
        db.commit()
        print(f"{mutant_id}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
