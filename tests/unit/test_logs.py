"""The log formatters: a value from a client can never forge, erase or split a line (issue 12)."""

from __future__ import annotations

import logging
import sys
import unicodedata

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gamegw.server.logs import JsonFormatter, TextFormatter

FORGED = "mallory\r\n2026-01-01 00:00:00,000 warning gamegw.gateway event=admin_kick user=root\x1b[2K"
# every C0 control, DEL, every C1 control, and the Unicode line/paragraph separators
CONTROLS = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)]


def record(event: str = "connect", exc: bool = False, **fields: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(FORGED)
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("gamegw.gateway", logging.INFO, __file__, 1, event, None, exc_info)
    rec.gamegw_fields = fields
    return rec


def text(event: str = "connect", **fields: object) -> str:
    return TextFormatter().format(record(event, **fields))


def test_a_forged_line_stays_inside_its_value() -> None:
    line = text(user=FORGED, sid="abc")
    assert line.endswith(' event=connect user="mallory\\r\\n2026-01-01 00:00:00,000 warning gamegw.gateway '
                         'event=admin_kick user=root\\x1b[2K" sid=abc')


@pytest.mark.parametrize(("char", "escaped"), [("\r", "\\r"), ("\n", "\\n"), ("\t", "\\t"), ("\x00", "\\x00"),
                                               ("\x1b", "\\x1b"), ("\x7f", "\\x7f"), ("\x85", "\\u0085"),
                                               ("\x9b", "\\u009b"), ("\u2028", "\\u2028")])
def test_each_kind_of_control_has_a_visible_escape(char: str, escaped: str) -> None:
    assert text(user=f"a{char}b").endswith(f' user="a{escaped}b"')


def test_every_control_is_escaped_in_text_values_and_in_the_event() -> None:
    value = "".join(CONTROLS)
    line = text(event=f"bad{value}", user=value)
    assert not any(c in line for c in CONTROLS), repr(line)


def test_quotes_and_backslashes_keep_values_apart() -> None:
    assert text(user='a" admin=1', path="a\\b", empty="", plain="abc").endswith(
        ' user="a\\" admin=1" path="a\\\\b" empty="" plain=abc')


@given(st.text())
def test_any_value_is_one_line_of_printable_text(value: str) -> None:
    line = text(user=value)
    assert not any(unicodedata.category(c) == "Cc" or c in "\u2028\u2029" for c in line), repr(line)


def test_a_traceback_cannot_start_a_line_of_its_own() -> None:
    """A client's text in an exception message: escaped, and every line after the first indented."""
    out = TextFormatter().format(record(exc=True, user="x"))
    first, *rest = out.split("\n")
    assert first.endswith(" event=connect user=x") and rest
    assert all(line.startswith("  ") for line in rest), rest
    assert "\r" not in out and "\x1b" not in out and "\\r" in out and "\\x1b" in out


def test_json_lines_escape_every_control_and_still_parse() -> None:
    value = FORGED + "".join(CONTROLS)
    line = JsonFormatter().format(record(user=value))
    assert not any(c in line for c in CONTROLS), repr(line)
    assert orjson.loads(line)["user"] == value
