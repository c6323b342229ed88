"""``docs/protocol.md`` tells client developers every code ``server/protocol/codes.py`` can answer with.

The doc's Markdown tables are parsed (each with the heading it sits under), and every refusal,
disconnect code, ack code, ``HttpRefusal`` and ``player_left`` reason must be a row of the
right table, with its number and reason in the row's own cells. The refusal, disconnect and
HTTP tables must not name codes that do not exist either. Defaults quoted in the settings
table must be the defaults of :class:`~server.config.Settings`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from gamegw.server.config import Settings
from gamegw.server.protocol import codes
from gamegw.server.protocol.codes import DISCONNECTS, REFUSALS, AckCode, HttpRefusal, LeftReason

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
HTTP_REFUSALS = [v for v in vars(codes).values() if isinstance(v, HttpRefusal)]


@dataclass(frozen=True)
class Table:
    heading: str  # the text of the last heading above the table
    headers: tuple[str, ...]
    rows: tuple[dict[str, str], ...]


def _cells(line: str) -> list[str]:
    """The cells of one table line; ``\\|`` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def parse_tables(text: str) -> list[Table]:
    """Every pipe table outside code fences: a header line, a ``|---|`` line, then rows."""
    tables: list[Table] = []
    lines = text.splitlines()
    heading, fenced, i = "", False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif (not fenced and line.startswith("|") and i + 1 < len(lines)
              and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())):
            headers = tuple(_cells(line))
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(headers), f"{DOC.name}: a row of the table under {heading!r}: {lines[i]}"
                rows.append(dict(zip(headers, cells, strict=True)))
                i += 1
            tables.append(Table(heading, headers, tuple(rows)))
            continue
        i += 1
    return tables


def names(cell: str) -> set[str]:
    """The code-formatted names in a cell (``token_invalid``, ``token_expired``)."""
    return set(re.findall(r"`([^`]+)`", cell))


def table(heading: str, *headers: str) -> Table:
    found = [t for t in parse_tables(DOC.read_text()) if t.heading == heading and set(headers) <= set(t.headers)]
    assert len(found) == 1, f"{DOC.name}: expected one table under {heading!r} with columns {headers}"
    return found[0]


def test_every_refusal_is_a_row_with_its_code_and_reason() -> None:
    refusals = table("Refusals", "message", "data.code", "data.reason", "when", "retry?")
    for refusal in REFUSALS.values():
        rows = [r for r in refusals.rows if names(r["message"]) == {refusal.name}]
        assert len(rows) == 1, f"refusal {refusal.name} has no row (or several) in the refusal table"
        [row] = rows
        assert row["data.code"] == str(refusal.code), refusal.name
        assert names(row["data.reason"]) == {refusal.reason}, refusal.name
        assert row["when"] and row["retry?"], refusal.name
    assert {n for r in refusals.rows for n in names(r["message"])} == set(REFUSALS), "a row names no refusal"


def test_every_disconnect_code_is_a_row_with_its_reason_and_reconnect_rule() -> None:
    disconnects = table("Disconnect codes", "code", "reason", "reconnect", "session", "when")
    for d in DISCONNECTS.values():
        rows = [r for r in disconnects.rows if r["code"] == str(d.code)]
        assert len(rows) == 1, f"disconnect {d.code} has no row (or several) in the disconnect table"
        [row] = rows
        assert names(row["reason"]) == {d.reason}, d.code
        assert row["reconnect"] == str(d.reconnect).lower(), d.code
        assert row["session"].startswith(("drop", "final", "neither")), d.code
        assert row["when"], d.code
    assert {r["code"] for r in disconnects.rows} == {str(d.code) for d in DISCONNECTS.values()}


def test_every_ack_code_is_a_row() -> None:
    acks = table("Ack error codes", "code", "returned by", "when", "what to do")
    documented = {n for r in acks.rows for n in names(r["code"])}
    missing = {str(c) for c in AckCode} - documented
    assert not missing, f"ack codes missing from the ack table: {sorted(missing)}"
    assert all(r["returned by"] and r["when"] and r["what to do"] for r in acks.rows)


def test_every_http_refusal_is_a_row_with_its_status() -> None:
    assert len(HTTP_REFUSALS) >= 6
    http = table("HTTP refusals (before any session)", "status", "code", "when")
    for refusal in HTTP_REFUSALS:
        rows = [r for r in http.rows if names(r["code"]) == {refusal.code} and r["status"] == str(refusal.status)]
        assert len(rows) == 1, f"HTTP {refusal.status} {refusal.code} has no row (or several)"
    assert {(r["status"], *names(r["code"])) for r in http.rows} == {(str(h.status), h.code) for h in HTTP_REFUSALS}


def test_every_player_left_reason_is_a_row() -> None:
    reasons = table("Events the server sends", "reason", "when")
    assert {n for r in reasons.rows for n in names(r["reason"])} == {str(r) for r in LeftReason}


DEFAULTS = dataclasses.asdict(Settings())


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_numeric_defaults_in_the_settings_table_are_the_real_ones() -> None:
    settings = table("Settings that change what a client sees", "setting", "default")
    checked = 0
    for row in settings.rows:
        known = [n for n in re.findall(r"`([a-z_]+)`", row["setting"]) if n in DEFAULTS]
        values = [v.strip() for v in row["default"].split(",")]
        if not known or len(values) != len(known) or any(_number(v) is None for v in values):
            continue
        for name, value in zip(known, values, strict=True):
            default = DEFAULTS[name]
            assert _number(value) == float(default), f"{name}: the doc says {value}, the default is {default}"
            checked += 1
    assert checked >= 20, checked


SERVER = Path(__file__).resolve().parents[2] / "server"
SENT = re.compile(r'(?:emit|emit_room|encode|encode_json)\((?:[^()"]*?, *)?"([a-z_]+)"')


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_every_event_a_client_may_send_has_its_own_section() -> None:
    from gamegw.server.gateway import Gateway

    handled = set(Gateway.EVENTS)
    documented = set(re.findall(r"^### `([a-z_]+)`$", _section(DOC.read_text(), "Events a client sends"),
                                re.MULTILINE))
    assert handled == {"join", "leave", "move", "sync", "state", "refresh"}
    assert documented == handled


def test_every_event_the_server_sends_is_a_row() -> None:
    sent = {name for path in SERVER.rglob("*.py") for name in SENT.findall(path.read_text())}
    assert {"session", "move", "player_left", "disconnect_reason", "token_expiring"} <= sent
    [table] = [t for t in parse_tables(DOC.read_text())
               if t.heading == "Events the server sends" and "event" in t.headers]
    assert {row["event"].strip("`") for row in table.rows} == sent
