"""``arena``: players stand on a grid and move one step (up, down, left, right) at a time.

The server enforces the rules: a step must stay within bounds and not land on another player.
A joining player is seated on the first free cell in reading order; a full grid is ``room_full``.
The broadcast action carries the new position: ``{"dir": "up", "pos": [x, y]}``.
"""

from __future__ import annotations

from typing import Any

from ...games import Game, State
from ..protocol.codes import AckCode
from ..protocol.errors import ActionError

STEPS = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}


class Arena(Game):
    name = "arena"
    stateless_moves = False

    @classmethod
    def from_settings(cls, settings: Any) -> Arena:
        return cls(width=settings.arena_width, height=settings.arena_height)

    def __init__(self, width: int = 16, height: int = 16) -> None:
        self.width = width
        self.height = height

    def initial_state(self) -> State:
        return {"width": self.width, "height": self.height, "players": {}}

    def on_join(self, state: State, user_id: str) -> None:
        players: dict[str, list[int]] = state["players"]
        if user_id in players:
            return
        taken = {tuple(p) for p in players.values()}
        for y in range(self.height):
            for x in range(self.width):
                if (x, y) not in taken:
                    players[user_id] = [x, y]
                    return
        raise ActionError(AckCode.ROOM_FULL, "the arena has no free cell")

    def on_leave(self, state: State, user_id: str) -> None:
        state["players"].pop(user_id, None)

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        direction = action.get("dir")
        if not isinstance(direction, str) or direction not in STEPS or set(action) != {"dir"}:
            raise ActionError(AckCode.INVALID_ACTION, "an arena action is {\"dir\": \"up|down|left|right\"}")
        players: dict[str, list[int]] = state["players"]
        x, y = players[user_id]
        dx, dy = STEPS[direction]
        nx, ny = x + dx, y + dy
        if not (0 <= nx < self.width and 0 <= ny < self.height):
            raise ActionError(AckCode.INVALID_ACTION, f"({nx}, {ny}) is off the {self.width}x{self.height} grid")
        if [nx, ny] in players.values():
            raise ActionError(AckCode.INVALID_ACTION, f"({nx}, {ny}) is taken")
        players[user_id] = [nx, ny]
        return {"dir": direction, "pos": [nx, ny]}
