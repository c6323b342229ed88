"""The load-test players: the Locust user class and the lean websocket client it drives."""
