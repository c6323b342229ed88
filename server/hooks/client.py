"""``Hooks``: POST an event to the backend's ``hooks_url`` and turn the answer into a verdict.

The request is ``{"event", "user", "room", "action", "session", "instance"}``; the answer is
``{"ok": true}`` or ``{"ok": false, "code": <str>, "message": <str>}`` (docs/protocol.md,
"Backend hooks"). Anything else — no answer within ``hooks_timeout_s``, a refused connection, a
status other than 2xx, a body that is not such an object — is a *failure*, and the verdict is
``hooks_on_error``'s: let the event through, or refuse it with ``hook_unavailable``.

One ``aiohttp.ClientSession`` with a bounded connection pool serves every call; each call has
its own timeout and nothing is locked, so a slow hook holds up only the events that wait for
it. A :class:`~.breaker.Breaker` stops calling a hook that keeps failing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..config import Settings
from ..logs import log
from ..metrics import Metrics
from .breaker import Breaker, State

logger = logging.getLogger("gamegw.hooks")

# what a hook may answer as ``code``: a lowercase identifier, optionally namespaced with dots
# (``no_credits``, ``shop.no_credits``); anything else is shown to the client as hook_refused
CODE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
MAX_CODE_CHARS = 64
MAX_MESSAGE_CHARS = 256
REFUSED = "hook_refused"
UNAVAILABLE = "hook_unavailable"
REFUSED_MESSAGE = "refused by the backend"
UNAVAILABLE_MESSAGE = "the backend hook is unavailable, retry"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    code: str = ""
    message: str = ""


ALLOW = Verdict(True)
DENY = Verdict(False, UNAVAILABLE, UNAVAILABLE_MESSAGE)


def veto(answer: dict[str, Any]) -> Verdict:
    """The hook's refusal as the client will see it: its code if it is a valid one, else hook_refused."""
    code, message = answer.get("code"), answer.get("message")
    if not isinstance(code, str) or len(code) > MAX_CODE_CHARS or not CODE.fullmatch(code):
        code = REFUSED
    if not isinstance(message, str) or not message:
        message = REFUSED_MESSAGE
    return Verdict(False, code, message[:MAX_MESSAGE_CHARS])


class HookFailed(Exception):
    """The hook answered, but not with a verdict."""


class Hooks:
    def __init__(self, settings: Settings, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = settings.hooks_url
        self.events = frozenset(settings.hooks_events) if settings.hooks_url else frozenset()
        self.instance_id = settings.instance_id
        self.timeout_s = settings.hooks_timeout_s
        self.on_error = ALLOW if settings.hooks_on_error == "allow" else DENY
        self.max_connections = settings.hooks_max_connections
        self.metrics = metrics
        self.breaker = Breaker(settings.hooks_breaker_failures, settings.hooks_breaker_cooldown_s, clock=clock,
                               on_change=self._breaker_changed)
        self._http: aiohttp.ClientSession | None = None
        self._calls = {(event, result): metrics.hook_calls.labels(event, result)
                       for event in self.events for result in ("ok", "veto", "timeout", "error", "open")}
        self._seconds = {event: metrics.hook_seconds.labels(event) for event in self.events}

    def wants(self, event: str) -> bool:
        return event in self.events

    async def check(self, event: str, *, user: str, room: str | None = None, action: Any = None,
                    session: str | None = None) -> Verdict:
        """Ask the hook about one event (one of ``self.events``)."""
        call, probe = self.breaker.admit()
        if not call:
            self._calls[(event, "open")].inc()
            return self.on_error
        body = orjson.dumps({"event": event, "user": user, "room": room, "action": action, "session": session,
                             "instance": self.instance_id})
        started = time.perf_counter()
        try:
            verdict = await asyncio.wait_for(self._post(body), self.timeout_s)
        except TimeoutError:
            return self._failed(event, "timeout", started)
        except (aiohttp.ClientError, OSError, HookFailed, ValueError):
            return self._failed(event, "error", started)
        except BaseException:  # cancelled (the connection went away): the probe is somebody else's now
            if probe:
                self.breaker.abandon()
            raise
        self._seconds[event].observe(time.perf_counter() - started)
        self._calls[(event, "ok" if verdict.ok else "veto")].inc()
        self.breaker.success()
        return verdict

    def _failed(self, event: str, result: str, started: float) -> Verdict:
        self._seconds[event].observe(time.perf_counter() - started)
        self._calls[(event, result)].inc()
        self.breaker.failure()
        return self.on_error

    async def _post(self, body: bytes) -> Verdict:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        async with self._http.post(self.url, data=body, headers={"Content-Type": "application/json"}) as resp:
            if not 200 <= resp.status < 300:
                raise HookFailed(f"status {resp.status}")
            answer = orjson.loads(await resp.read())
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            raise HookFailed("the answer is not {ok: bool, ...}")
        return ALLOW if answer["ok"] else veto(answer)

    def _breaker_changed(self, state: State, failures: int) -> None:
        self.metrics.hook_breaker_open.set(1 if state is State.OPEN else 0)
        if state is State.OPEN:
            self.metrics.hook_breaker_opens.inc()
            log(logger, "hook_breaker_open", logging.WARNING, url=self.url, failures=failures,
                cooldown_s=self.breaker.cooldown_s, on_error="allow" if self.on_error.ok else "deny")
        else:
            log(logger, "hook_breaker_closed", url=self.url)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
