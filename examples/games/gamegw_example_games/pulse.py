"""``pulse``: a server-authoritative room that beats ten times a second.

Every tick broadcasts ``{"beat": <n>}``, n counting from 1 for the room; players only watch
(any move of theirs is illegal). The smallest ticking game: a clock every member shares.
"""

from __future__ import annotations

from typing import Any

from gamegw.games import Game, IllegalMove, State


class Pulse(Game):
    name = "pulse"
    tick_s = 0.1

    def initial_state(self) -> State:
        return {"players": [], "beat": 0}

    def on_join(self, state: State, user: str) -> None:
        if user not in state["players"]:
            state["players"].append(user)

    def on_leave(self, state: State, user: str) -> None:
        if user in state["players"]:
            state["players"].remove(user)

    def apply(self, state: State, user: str, action: dict[str, Any]) -> dict[str, Any]:
        raise IllegalMove("pulse beats by itself: players only watch")

    def tick(self, state: State, now: float) -> list[dict[str, Any]]:
        state["beat"] += 1
        return [{"beat": state["beat"]}]
