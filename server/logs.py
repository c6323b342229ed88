"""Structured logging: one line per lifecycle event, fields as key=value (or JSON).

``log(logger, "connect", user=..., sid=...)`` writes ``event=connect user=... sid=...``.
Tokens are never passed here; only the verified user id is.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import orjson

_FIELDS = "gamegw_fields"


def log(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_FIELDS: fields})


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
