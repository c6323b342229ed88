"""``tictactoe``: two players take turns marking the cells 0..8 of a 3x3 board.

The first player to join plays ``x`` and moves first; a third player's join is refused. An
action is ``{"cell": <0..8>}``; the broadcast action adds the mark and, once the game is over,
the winner (``"x"``, ``"o"`` or ``"draw"``).
"""

from __future__ import annotations

from typing import Any

from gamegw.games import Game, IllegalMove, State

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
MARKS = ("x", "o")


class TicTacToe(Game):
    name = "tictactoe"

    def initial_state(self) -> State:
        return {"players": [], "board": [""] * 9, "turn": "x", "winner": None}

    def on_join(self, state: State, user: str) -> None:
        if user in state["players"]:
            return
        if len(state["players"]) >= 2:
            raise IllegalMove("the game has its two players")
        state["players"].append(user)

    def on_leave(self, state: State, user: str) -> None:
        if user in state["players"]:  # the game starts again for whoever comes next
            state.update(self.initial_state(), players=[p for p in state["players"] if p != user])

    def apply(self, state: State, user: str, action: dict[str, Any]) -> dict[str, Any]:
        cell = action.get("cell")
        if not isinstance(cell, int) or isinstance(cell, bool) or not 0 <= cell < 9 or set(action) != {"cell"}:
            raise IllegalMove('an action is {"cell": 0..8}')
        if state["winner"] is not None:
            raise IllegalMove("the game is over")
        if len(state["players"]) < 2:
            raise IllegalMove("waiting for a second player")
        mark = MARKS[state["players"].index(user)]
        if mark != state["turn"]:
            raise IllegalMove("not your turn")
        if state["board"][cell]:
            raise IllegalMove(f"cell {cell} is taken")
        board = state["board"]
        board[cell] = mark
        if any(board[a] == board[b] == board[c] == mark for a, b, c in LINES):
            state["winner"] = mark
        elif all(board):
            state["winner"] = "draw"
        state["turn"] = "o" if mark == "x" else "x"
        applied: dict[str, Any] = {"cell": cell, "mark": mark}
        if state["winner"] is not None:
            applied["winner"] = state["winner"]
        return applied
