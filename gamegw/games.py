"""Game plugins: what a game implements, and how the gateway finds the installed ones.

A game is a class derived from :class:`Game`, published by its distribution under the
entry-point group ``gamegw.games``; the gateway's ``game`` setting names one. ``relay`` and
``arena`` ship with gamegw and are registered the same way. docs/games.md explains how to write,
package and install one.

This module imports nothing of the gateway: a game package depends on it alone.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

GROUP = "gamegw.games"
State = dict[str, Any]
Action = dict[str, Any]


class IllegalMove(Exception):
    """A move (or a join) the game refuses. The player's ack is
    ``{"ok": false, "error": {"code": "illegal_move", "message": <message>}}``; the state must be
    as it was (check everything before mutating anything)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Game:
    """One game's rules. The state is a JSON object the gateway keeps (in memory, or in Redis
    for a cluster) and hands to each method, which mutates it in place. The methods are called
    one room at a time; in a cluster any instance may call them, so a game keeps nothing of a
    room outside its state.

    ``tick_s`` > 0 makes the game server-authoritative: every ``tick_s`` seconds, on exactly one
    instance of the cluster, ``tick(state, now)`` advances the room and returns the actions that
    are broadcast as moves of the user ``""``.
    """

    name: ClassVar[str] = ""
    # True when apply() neither reads nor changes the state: the cluster store then skips the
    # read-modify-write of the state on every move (one Redis round trip instead of two).
    stateless_moves: ClassVar[bool] = False
    tick_s: ClassVar[float] = 0.0

    @classmethod
    def from_settings(cls, settings: Any) -> Game:
        """The game for the gateway's settings (override to read options of the game's own)."""
        return cls()

    def initial_state(self) -> State:
        """The state of a room nobody has joined yet."""
        return {}

    def on_join(self, state: State, user: str) -> None:
        """Seat a player (raise :class:`IllegalMove` to refuse the join)."""

    def on_leave(self, state: State, user: str) -> None:
        """Free a player's seat for good (a final leave, not a drop)."""

    def apply(self, state: State, user: str, action: Action) -> Action:
        """Check and apply an action; return the action as it is broadcast."""
        raise NotImplementedError

    def tick(self, state: State, now: float) -> list[Action]:
        """Advance the room by one tick (``now``: seconds since the epoch); the actions returned
        are broadcast in order, each with the room's next seq."""
        return []


def installed() -> dict[str, EntryPoint]:
    """The games installed in this environment, by name."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load(name: str) -> type[Game]:
    """The game class installed as ``name``; :class:`LookupError` naming the installed ones."""
    found = installed()
    if name not in found:
        raise LookupError(f"{name!r} is not an installed game (installed: {', '.join(sorted(found)) or 'none'})")
    game = found[name].load()
    if not (isinstance(game, type) and issubclass(game, Game)):
        raise LookupError(f"the entry point {found[name].value!r} of {name!r} is not a gamegw.games.Game")
    return game
