"""orjson behind the ``json`` module interface that python-socketio and python-engineio call.

Encoding and decoding every packet is a large share of the gateway's CPU; orjson does it
several times faster than the standard library. Keyword arguments such as ``separators`` are
accepted and ignored: orjson's output is always compact.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS


def dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, option=_OPTIONS).decode()


def loads(text: str | bytes, **_: Any) -> Any:
    return orjson.loads(text)


JSONDecodeError = orjson.JSONDecodeError
