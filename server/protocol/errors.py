"""The gateway's exceptions, one root.

::

    GamegwError
    ├── ConfigError          a bad setting; startup stops with its one-line message and hint
    ├── StartupError         the settings are fine but the gateway cannot start with them here:
    │                        a port in use, an address not this machine's, Redis unreachable
    ├── AuthError            a handshake refused; carries a codes.Refusal
    ├── ActionError          an event refused; carries a codes.AckCode, becomes an error ack
    │   ├── StoreUnavailable the state store did not answer in time (ack code ``unavailable``)
    │   └── HookRefused      a backend hook vetoed the event, with a code of its own
    └── AdminError           an admin request that cannot be carried out (HTTP status + code)
"""

from __future__ import annotations

from ..guard.limits import Limit
from .codes import AckCode, Refusal


class GamegwError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GamegwError):
    """A setting is missing or wrong. The message names the setting; ``hint``, when there is
    one, says what would fix it (the accepted forms, the variable to set)."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class StartupError(GamegwError):
    """The gateway cannot start: one line saying what failed (naming the address or the URL),
    and a hint naming the fix. Raised before ``ready`` is logged, after closing what was opened."""

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class AuthError(GamegwError):
    def __init__(self, refusal: Refusal, detail: str | None = None, *, limit: Limit | None = None) -> None:
        super().__init__(detail or refusal.reason)
        self.refusal = refusal
        self.detail = detail or refusal.reason
        self.limit = limit  # the limit that was hit, if that is why


class ActionError(GamegwError):
    def __init__(self, code: AckCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def label(self) -> str:
        """The result as metrics count it."""
        return str(self.code)

    def ack(self) -> dict[str, object]:
        return {"ok": False, "error": {"code": str(self.code), "message": self.message}}


class HookRefused(ActionError):
    """A backend hook's veto: the ack carries the hook's code (any lowercase identifier, so not
    an :class:`AckCode`); metrics count it under ``hook_refused`` so that hooks cannot grow the
    label set."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(AckCode.HOOK_REFUSED, message)
        self.hook_code = code

    def ack(self) -> dict[str, object]:
        return {"ok": False, "error": {"code": self.hook_code, "message": self.message}}


class StoreUnavailable(ActionError):
    def __init__(self, message: str = "state store unreachable, retry") -> None:
        super().__init__(AckCode.UNAVAILABLE, message)


class AdminError(GamegwError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
