"""What this instance knows of one of its own connections: the record the gateway keeps per
``sid``, and the guards read when they cut or refuse one."""

from __future__ import annotations

from dataclasses import dataclass, field

from .auth.tokens import Claims
from .guard.limits import Budget
from .protocol.codes import Disconnect
from .state.sessions import Session


@dataclass
class Conn:
    """What this instance knows of one of its own connections."""

    sid: str
    claims: Claims
    address: str
    session: Session
    resumed: bool = False  # the connection took back a session (after a drop, or from a stale connection)
    from_grace: bool = False  # ... and that session had dropped (the rooms saw player_disconnected)
    last_seq: dict[str, int] = field(default_factory=dict)  # auth.last_seq: what the client has seen
    touched: float = 0.0
    closing: Disconnect | None = None  # set when the server closes the connection on purpose
    deferred: tuple[Disconnect, str] | None = None  # a close that came while the connect was under way
    cut: str = ""  # why the server cut the transport without a word: simulated_drop, slow_consumer
    budget: Budget | None = None  # the user's events per second and abuse counter (shared, see limits.py)

    @property
    def rooms(self) -> dict[str, int]:
        return self.session.rooms
