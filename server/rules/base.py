"""The interface the room stores call, and the adapter that puts a plugin game behind it.

State is a JSON object, so that it can live in memory or in Redis alike. The methods mutate the
state they are given and raise :class:`~gamegw.server.protocol.errors.ActionError` to refuse.
The room's store calls them one room at a time; a method must check everything before it
mutates anything, so that a refused action leaves the state as it was (no copy is taken on the
hot path).

Games are written against :class:`gamegw.games.Game` (docs/games.md); :class:`GameRules` turns
a game's :class:`~gamegw.games.IllegalMove` into the ``illegal_move`` ack.
"""

from __future__ import annotations

from typing import Any, Protocol

from ...games import Game, IllegalMove, State
from ..protocol.codes import AckCode
from ..protocol.errors import ActionError

__all__ = ["GameRules", "Rules", "State"]


class Rules(Protocol):
    name: str
    # True when apply() neither reads nor changes the state: the cluster store then skips the
    # read-modify-write of the state on every move (one Redis round trip instead of two).
    stateless_moves: bool
    tick_s: float  # > 0: the room ticks (tick() every tick_s seconds, on one instance)

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

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        """Advance the room by one tick; the actions to broadcast as the server's moves."""
        ...


class GameRules:
    """A plugin game as :class:`Rules`: its :class:`IllegalMove` becomes ``illegal_move``."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.name = game.name
        self.stateless_moves = game.stateless_moves
        self.tick_s = float(game.tick_s)

    def initial_state(self) -> State:
        return self.game.initial_state()

    def on_join(self, state: State, user_id: str) -> None:
        try:
            self.game.on_join(state, user_id)
        except IllegalMove as exc:
            raise ActionError(AckCode.ILLEGAL_MOVE, exc.message) from None

    def on_leave(self, state: State, user_id: str) -> None:
        self.game.on_leave(state, user_id)

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.game.apply(state, user_id, action)
        except IllegalMove as exc:
            raise ActionError(AckCode.ILLEGAL_MOVE, exc.message) from None

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        return self.game.tick(state, now)
