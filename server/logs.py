"""Structured logging: one line per lifecycle event, fields as key=value (or JSON).

``log(logger, "connect", user=..., sid=...)`` writes ``event=connect user=... sid=...``.
Tokens are never passed here; only the verified user id is. Values may come from clients (a
user id, a namespace, an address): both formats escape every control character in them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError

_FIELDS = "gamegw_fields"
_bad_http_logger = logging.getLogger("gamegw.http")


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


class BadHttpFilter(logging.Filter):
    """For aiohttp's server logger: a request that is not valid HTTP (a bad header, bad framing)
    is the client's error, which aiohttp logs with a traceback every time, so anyone could fill
    the log. It becomes one throttled ``bad_http`` line of the gateway's, without the
    traceback; everything else (a handler's 500, a real bug) passes untouched."""

    def __init__(self, *, throttle: Throttle | None = None) -> None:
        super().__init__()
        self.throttle = throttle or Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= exc.code < 500:
            return True
        address = record.args[0] if isinstance(record.args, tuple) and record.args else ""
        self.throttle.log(_bad_http_logger, "bad_http", logging.WARNING, address=address, status=exc.code,
                          detail=str(exc.message)[:200])
        return False


def quiet_bad_http() -> None:
    """Install :class:`BadHttpFilter` on aiohttp's server logger (once per process)."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadHttpFilter) for f in server_logger.filters):
        server_logger.addFilter(BadHttpFilter())


def library_logger(name: str) -> logging.Logger:
    """A logger for python-engineio: warnings and errors only (its info lines are per packet and
    carry payloads), and no more than a trickle of each."""
    library = logging.getLogger(f"gamegw.{name}")
    library.setLevel(logging.WARNING)
    if not any(isinstance(f, ThrottleFilter) for f in library.filters):
        library.addFilter(ThrottleFilter())
    return library


def _escape(code: int) -> str:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
    return named.get(code) or (f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}")


# Every C0 and C1 control, DEL, and the Unicode line and paragraph separators: a value from a
# client (a user id, an event name, a header) must never move the cursor, clear a line or start
# a new one in a terminal or a line-based log reader, or it could forge a line of its own.
_CONTROLS = {code: _escape(code) for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}
_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', **_CONTROLS})
_JSON_ESCAPES = str.maketrans({code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), 0x2028, 0x2029)})
_TRACE_ESCAPES = str.maketrans({code: text for code, text in _CONTROLS.items() if code != 0x0A})
_QUOTE = frozenset(' "=\\').union(chr(code) for code in _CONTROLS)


def _text_value(value: Any) -> str:
    """A value of a key=value line: bare when it is plain, else quoted with ``\\``, ``"`` and every
    control escaped (``\\r``, ``\\x1b``, ``\\u0085``), so that a line is always one line."""
    text = str(value)
    if text == "" or not _QUOTE.isdisjoint(text):
        return '"' + text.translate(_TEXT_ESCAPES) + '"'
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        head = (f"{self.formatTime(record)} {record.levelname.lower()} {record.name} "
                f"event={_text_value(record.getMessage())}")
        body = "".join(f" {k}={_text_value(v)}" for k, v in fields.items())
        out = head + body
        if record.exc_info:  # indented: only a record's first line starts at column 0
            trace = self.formatException(record.exc_info).translate(_TRACE_ESCAPES)
            out += "\n  " + trace.replace("\n", "\n  ")
        return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, _FIELDS, {})
        data = {"ts": record.created, "level": record.levelname.lower(), "logger": record.name,
                "event": record.getMessage(), **fields}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        # orjson escapes C0 controls only; DEL, C1 and the separators go out as \u escapes too
        # (they can only occur inside JSON strings, where the escape means the same character)
        return orjson.dumps(data, default=str).decode().translate(_JSON_ESCAPES)


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
