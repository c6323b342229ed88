"""Example gamegw games: ``tictactoe`` (two players, turns) and ``pulse`` (a ticking room)."""
