"""``relay``: every JSON object is a legal action. The gateway's size limit still applies.

The state is who plays; the number of moves is the room's ``seq``.
"""

from __future__ import annotations

from typing import Any

from ...games import Game, State


class Relay(Game):
    name = "relay"
    stateless_moves = True

    def initial_state(self) -> State:
        return {"players": []}

    def on_join(self, state: State, user_id: str) -> None:
        if user_id not in state["players"]:
            state["players"].append(user_id)

    def on_leave(self, state: State, user_id: str) -> None:
        if user_id in state["players"]:
            state["players"].remove(user_id)

    def apply(self, state: State, user_id: str, action: dict[str, Any]) -> dict[str, Any]:
        return action
