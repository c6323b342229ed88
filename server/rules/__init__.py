"""Game rules: what a room's state is and which actions are legal.

The gateway knows nothing of any game; it asks the configured :class:`Rules` to admit players,
check and apply actions, and show a room's state. Two games ship: ``relay`` (any JSON object,
the default) and ``arena`` (a grid where a player moves one step at a time within bounds).
"""

from __future__ import annotations

from ..config import Settings
from ..protocol.errors import ConfigError
from .arena import Arena
from .base import Rules, State
from .relay import Relay

__all__ = ["Arena", "Relay", "Rules", "State", "make_rules"]


def make_rules(settings: Settings) -> Rules:
    if settings.game == "relay":
        return Relay()
    if settings.game == "arena":
        return Arena(width=settings.arena_width, height=settings.arena_height)
    raise ConfigError(f"game: {settings.game!r} is not a known game")
