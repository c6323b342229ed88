"""The live operations dashboard: a page served on the admin listener (``/admin/ui``), fed by
a snapshot and then deltas over ``/admin/live``; see ``feed.py`` for what it costs."""
