"""Backend hooks: the gateway asks a backend over HTTP whether to let an event through."""
