"""Game rules: what a room's state is and which actions are legal.

The gateway knows nothing of any game; it asks the configured :class:`Rules` to admit players,
check and apply actions, advance ticking rooms and show a room's state. Games are plugins
(:mod:`gamegw.games`, found through the entry-point group ``gamegw.games``); two ship here and
are registered the same way: ``relay`` (any JSON object, the default) and ``arena`` (a grid
where a player moves one step at a time within bounds).
"""

from __future__ import annotations

from ... import games
from ..config import Settings
from ..protocol.errors import ConfigError
from .arena import Arena
from .base import GameRules, Rules, State
from .relay import Relay

__all__ = ["Arena", "GameRules", "Relay", "Rules", "State", "make_rules"]


def make_rules(settings: Settings) -> Rules:
    """The rules of the game ``settings.game`` names, among the installed plugins."""
    try:
        game = games.load(settings.game)
    except LookupError as exc:
        raise ConfigError(f"game: {exc}", hint="install the game's package into the gateway's environment "
                                               "(docs/games.md)") from None
    return GameRules(game.from_settings(settings))
