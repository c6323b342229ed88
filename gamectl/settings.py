"""The settings every command reads, as the gateway would read them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gamegw.server.config import Settings, load_settings
from gamegw.server.protocol.errors import ConfigError

from .output import fail


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    """Load settings as the server would, or exit 1 with the setting that is wrong."""
    environ = {k: v for k, v in os.environ.items() if k != "GAMEGW_CONFIG"}
    try:
        return load_settings(environ, config, overrides)
    except ConfigError as exc:
        fail(1, str(exc), exc.hint or "check the config file, GAMEGW_* variables and flags (gamectl serve --help)")
