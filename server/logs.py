"""Structured logging: one line per lifecycle event, fields as key=value (or JSON).

``log(logger, "connect", user=..., sid=...)`` writes ``event=connect user=... sid=...``.
Tokens are never passed here; only the verified user id is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

_FIELDS = "gamegw_fields"


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


class Throttle:
    """Log lines that an attacker could multiply (refusals, limits hit), kept to a trickle.

    Per key (the event name unless told), ``burst`` lines may go at once and ``rate`` a second after that; the lines
    held back are counted, and the next line that goes out says how many (``suppressed=N``).
    """

    def __init__(self, *, rate: float = 2.0, burst: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._state: dict[str, list[float]] = {}  # event -> [tokens, stamp, suppressed]

    def log(self, logger: logging.Logger, event: str, level: int = logging.INFO, *, key: str = "",
            **fields: Any) -> bool:
        """Log the line unless ``key`` (default: the event) is over its rate; return whether it was."""
        if not logger.isEnabledFor(level):
            return False
        now = self._clock()
        key = key or event
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = [self._burst, now, 0.0]
        state[0] = min(self._burst, state[0] + (now - state[1]) * self._rate)
        state[1] = now
        if state[0] < 1.0:
            state[2] += 1
            return False
        state[0] -= 1.0
        if state[2]:
            fields["suppressed"] = int(state[2])
            state[2] = 0
        log(logger, event, level, **fields)
        return True


class ThrottleFilter(logging.Filter):
    """A logging filter with :class:`Throttle`'s rule, keyed by the message's format string: for
    libraries that log a traceback per bad packet (python-engineio's "Unknown receive error")."""

    def __init__(self, *, rate: float = 1.0, burst: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._state: dict[str, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        state = self._state.setdefault(str(record.msg)[:200], [self._burst, now])
        state[0] = min(self._burst, state[0] + (now - state[1]) * self._rate)
        state[1] = now
        if state[0] < 1.0:
            return False
        state[0] -= 1.0
        return True


def library_logger(name: str) -> logging.Logger:
    """A logger for python-engineio: warnings and errors only (its info lines are per packet and
    carry payloads), and no more than a trickle of each."""
    library = logging.getLogger(f"gamegw.{name}")
    library.setLevel(logging.WARNING)
    if not any(isinstance(f, ThrottleFilter) for f in library.filters):
        library.addFilter(ThrottleFilter())
    return library


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        head = f"{self.formatTime(record)} {record.levelname.lower()} {record.name} event={record.getMessage()}"
        body = "".join(f" {k}={_text_value(v)}" for k, v in fields.items())
        out = head + body
        if record.exc_info:
            out += "\n" + self.formatException(record.exc_info)
        return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        data = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
                "event": record.getMessage(), **fields}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("gamegw")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


async def stop_task(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel a background loop and wait until it has really ended.

    One ``cancel()`` is not always enough: a cancel that lands just as an inner ``wait_for``
    completes can be swallowed (redis-py, Python 3.11), and the loop would sleep on forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
