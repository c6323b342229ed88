"""Mutation scores per module, read from mutmut 2's cache (.mutmut-cache, at the repository's root).

    .venv/bin/python tools/mutation/score.py [--survivors] [--min PERCENT] [--untested] [MODULE ...]

A mutant counts as caught when the tests failed (killed; "suspicious" is mutmut's name for a
failure that took long) or hung (timeout: the mutant loops); it survived when they passed. A module mutmut has not run
over is reported with its mutant count and no score.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections import Counter
from pathlib import Path

CAUGHT = {"ok_killed", "ok_suspicious", "bad_timeout"}
SURVIVED = {"bad_survived"}
ROOT = Path(__file__).resolve().parents[2]


def modules_listed() -> list[str]:
    lines = (ROOT / "tools" / "mutation" / "modules.txt").read_text().splitlines()
    return [line.split("|")[0].strip() for line in lines if "|" in line and not line.startswith("#")]


def mutant_count(module: str) -> int:
    from mutmut import Context, list_mutations  # type: ignore[import-untyped]

    return len(list_mutations(Context(source=(ROOT / module).read_text(), filename=module)))


def rows(db: sqlite3.Connection, module: str) -> list[tuple[int, str, int, str]]:
    query = ("SELECT m.id, m.status, l.line_number, l.line FROM Mutant m JOIN Line l ON m.line = l.id"
             " JOIN SourceFile s ON l.sourcefile = s.id WHERE s.filename = ? ORDER BY m.id")
    return list(db.execute(query, (module,)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="module paths as in tools/mutation/modules.txt (default: all)")
    parser.add_argument("--survivors", action="store_true", help="list each survivor: id, line number, line")
    parser.add_argument("--untested", action="store_true",
                        help="print only the ids of the mutants mutmut left untested, one a line")
    parser.add_argument("--min", type=float, help="exit 1 when a module that was run scores under this percent")
    args = parser.parse_args()
    under = []
    cache = ROOT / ".mutmut-cache"
    db = sqlite3.connect(cache) if cache.exists() else None
    for module in args.modules or modules_listed():
        found = rows(db, module) if db else []
        if args.untested:
            print("\n".join(str(mutant_id) for mutant_id, status, _, _ in found if status == "untested"))
            continue
        statuses = Counter(status for _, status, _, _ in found)
        caught, survived = sum(statuses[s] for s in CAUGHT), sum(statuses[s] for s in SURVIVED)
        if not caught + survived:
            print(f"{module}: no mutant run ({mutant_count(module)} in the whole module)")
            continue
        untested = statuses["untested"]
        score = 100 * caught / (caught + survived)
        if args.min is not None and score < args.min:
            under.append(module)
        print(f"{module}: {score:.1f}% ({caught} caught of {caught + survived}"
              + (f", {untested} untested" if untested else "") + ")")
        if args.survivors:
            for mutant_id, status, number, line in found:
                if status in SURVIVED:
                    print(f"  {mutant_id:5} {status:13} {number + 1:4}: {line.strip()}")
    if under:
        print(f"under {args.min:g}%: {', '.join(under)} (each survivor: `.venv/bin/mutmut show ID`)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
