"""gamegw: a real-time gateway for multiplayer games.

The wheel installs this one import package. The repository keeps its folders at the top
(``server/``, ``gamectl/``); ``gamegw/server`` and ``gamegw/gamectl`` are links to them, so a
checkout imports exactly what the wheel installs: ``gamegw.server`` (the gateway) and
``gamegw.gamectl`` (the operator CLI). Nothing imports ``server`` or ``gamectl`` at the top.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gamegw")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
