"""The README's limits table ("Security and limits") names every ``limit`` label of
``gamegw_limit_hits_total`` that the code counts (:class:`~server.guard.limits.Limit`), and no other."""

from __future__ import annotations

import re
from pathlib import Path

from gamegw.server.guard.limits import Limit
from tests.unit.test_protocol_doc import parse_tables

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_limit_label_is_documented_and_only_those() -> None:
    [table] = [t for t in parse_tables(README.read_text()) if t.headers[0] == "limit"]
    documented = set()
    for row in table.rows:
        label = re.match(r"`([a-z_]+)`", row["limit"])
        assert label is not None, row
        documented.add(label.group(1))
    assert documented == {limit.value for limit in Limit}
