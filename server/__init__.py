"""gamegw: a real-time gateway for multiplayer games over Socket.IO."""

__version__ = "0.1.0"
