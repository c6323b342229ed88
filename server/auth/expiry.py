"""Token expiry on live connections.

A connection lives as long as its token: ``token_expiring`` is sent ``token_expiring_s`` before
``exp``, a ``refresh`` with a fresh token for the same user moves both deadlines, and once
``exp`` plus the leeway passes without one the connection is closed with ``4005 token_expired``
(a code under 4500: the client reconnects with a fresh token and, within grace, resumes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Action = Callable[[str, float], Coroutine[Any, Any, Any]]


class TokenClock:
    def __init__(self, *, warn_s: float, leeway_s: float, clock: Callable[[], float],
                 on_warn: Action, on_expire: Action) -> None:
        self._warn_s = warn_s
        self._leeway_s = leeway_s
        self._clock = clock
        self._on_warn = on_warn
        self._on_expire = on_expire
        self._timers: dict[str, tuple[asyncio.TimerHandle, asyncio.TimerHandle]] = {}
        self._exp: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def arm(self, sid: str, exp: float) -> None:
        """(Re)start a connection's timers for a token that expires at ``exp`` (epoch seconds)."""
        self.disarm(sid)
        loop = asyncio.get_running_loop()
        now = self._clock()
        warn = loop.call_later(max(0.0, exp - self._warn_s - now), self._run, self._on_warn, sid, exp)
        expire = loop.call_later(max(0.0, exp + self._leeway_s - now), self._run, self._on_expire, sid, exp)
        self._timers[sid] = (warn, expire)
        self._exp[sid] = exp

    def armed_for(self, sid: str) -> float | None:
        """The ``exp`` a connection's timers run to, or None once disarmed."""
        return self._exp.get(sid)

    def disarm(self, sid: str) -> None:
        self._exp.pop(sid, None)
        for handle in self._timers.pop(sid, ()):
            handle.cancel()

    def _run(self, action: Action, sid: str, exp: float) -> None:
        task = asyncio.get_running_loop().create_task(action(sid, exp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def aclose(self) -> None:
        for sid in list(self._timers):
            self.disarm(sid)
