"""Example third-party pgx plugin: the ``line-count`` stage."""
