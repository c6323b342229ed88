"""``gamectl serve`` tunes CPython's cycle collector for a server of many long-lived objects
(server/app.py, ``tune_gc``): what start-up made is frozen, and young passes come every 50,000
new container objects instead of 700 (a connect storm spent a third of its time collecting)."""

from __future__ import annotations

import gc

from gamegw.server.app import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS == (50_000, 20, 100)
        assert gc.get_freeze_count() > 1000  # this process's modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
