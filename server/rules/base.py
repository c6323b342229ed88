"""The interface every game implements.

State is a JSON object, so that it can live in memory or in Redis alike. The methods mutate the
state they are given and raise :class:`~server.errors.ActionError` to refuse. The room's store
calls them one room at a time; a method must check everything before it mutates anything, so
that a refused action leaves the state as it was (no copy is taken on the hot path).
"""

from __future__ import annotations

from typing import Any, Protocol

State = dict[str, Any]


class Rules(Protocol):
    name: str
    # True when apply() neither reads nor changes the state: the cluster store then skips the
    # read-modify-write of the state on every move (one Redis round trip instead of two).
    stateless_moves: bool

    def initial_state(self) -> State:
        """The state of a room nobody has joined yet."""
        ...

    def on_join(self, state: State, user_id: str) -> None:
        """Seat a player (raise ``room_full`` when there is no seat)."""
        ...

    def on_leave(self, state: State, user_id: str) -> None:
        """Free a player's seat for good (a final leave, not a drop)."""
        ...

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        """Check and apply an action; return the action as it is broadcast."""
        ...
