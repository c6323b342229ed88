"""The admin API client the ops commands share: one request, errors turned into ``fail``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from gamegw.server.auth.tokens import mint
from gamegw.server.config import Settings
from gamegw.server.protocol.errors import ConfigError

from .output import fail


class AdminClient:
    """Without ``token``, each request signs an admin token of its own: short-lived (never longer
    than the gateway accepts), and fresh however long the command runs (``--watch``)."""

    def __init__(self, settings: Settings, url: str | None, token: str | None, timeout_s: float = 10,
                 token_ttl_s: float = 120.0, clock: Callable[[], float] = time.time) -> None:
        self.url = (url or default_url(settings)).rstrip("/")
        self._settings = settings
        self._ttl_s = min(token_ttl_s, settings.jwt_max_lifetime_s)
        self._given = token
        self._timeout = timeout_s
        self._clock = clock
        self._token()  # a key that cannot sign fails here, before anything is sent

    def _token(self) -> str:
        if self._given is not None:
            return self._given
        try:
            return mint(self._settings, "gamectl", ttl_s=self._ttl_s, role="admin", now=self._clock())
        except ConfigError as exc:
            fail(1, str(exc), "pass --token with an admin JWT, or configure the signing key")

    def get(self, path: str, **query: str | None) -> Any:
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v})
        return self._request("GET", path + (f"?{params}" if params else ""))

    def post(self, path: str, body: dict[str, Any], hints: dict[str, str] | None = None) -> Any:
        """``hints``: error code -> the hint to print when the gateway answers with that code."""
        return self._request("POST", path, body, hints)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 hints: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token()}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())["error"]
                message = f"{error['code']}: {error['message']}"
            except (ValueError, KeyError, TypeError):
                error, message = {}, f"HTTP {exc.code}"
            hint = (hints or {}).get(str(error.get("code", "")))
            if hint is None and exc.code in (401, 403):
                hint = self._refusal_hint(str(error.get("message", "")))
            fail(1, f"the gateway refused: {message}", hint)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            fail(1, f"cannot reach the gateway at {self.url}: {reason}",
                 "is `gamectl serve` running there? pass --url http://host:port")

    def _refusal_hint(self, detail: str) -> str:
        """What makes the gateway accept the admin token, by what it said was wrong with it."""
        if self._given is not None:
            return ("--token must be a JWT with role=admin signed with the gateway's key "
                    "(`gamectl token ops --role admin` with GAMEGW_JWT_SECRET set to that key makes one)")
        for claim in ("audience", "issuer"):
            if claim in detail.lower():
                return (f"gamectl signs its admin token for the configured {claim}: set GAMEGW_JWT_{claim.upper()} "
                        f"as the gateway has it, or pass --config with the gateway's file")
        return ("gamectl signed its admin token with a key the gateway does not accept: set GAMEGW_JWT_SECRET "
                "to the gateway's key (GAMEGW_JWT_PRIVATE_KEY_FILE for RS/ES keys), pass --config with the "
                "gateway's file, or pass --token with an admin JWT")


def default_url(settings: Settings) -> str:
    """The admin API of the configured instance: its admin listener when it has one."""
    if settings.admin_port is None:
        return f"http://{_connect_host(settings.host)}:{settings.port}"
    if settings.admin_port == 0:
        fail(1, "admin_port = 0: the admin listener's port is chosen at start",
             "pass --url (the gateway's `ready` log line says admin_url)")
    return f"http://{_connect_host(settings.admin_host)}:{settings.admin_port}"


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
