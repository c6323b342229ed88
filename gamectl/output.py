"""How every command ends: data on stdout (a rich table, or JSON with ``--json``), errors as one
line on stderr with a hint, and the contract's exit codes (0 ok, 1 failure, 2 bad usage)."""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape

stdout = Console()
stderr = Console(stderr=True)

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def fail(code: int, message: str, hint: str | None = None) -> NoReturn:
    # escaped: a message quotes what the operator typed (a URL form such as [user:password@], a
    # user id), which rich would otherwise take for markup and drop
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if hint:
        stderr.print(f"[dim]hint: {escape(hint)}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n")
    sys.stdout.flush()


def parse_duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds; bad input is a usage error."""
    m = DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 15m, 1h", param_hint=option)
    return float(m.group(1)) * UNITS[m.group(2)]
