"""pgx core runtime: run specs, plugins, storage, state, promotion and execution."""

__version__ = "0.1.0"
