"""The core's tests run with every built-in plugin disabled.

The core must work on its own: a third party can install ``pgx`` and only its own stages. So
every test here sees ``PGX_DISABLE_PLUGINS`` naming each plugin pgx's own distribution ships, in
this process and in every ``pgx`` subprocess a test starts. Tests of the built-in plugins (their
parameters, commands and report sections) live in ``tests/plugins``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from pgx_core.pluginmanager import GROUP


def built_in_plugins() -> tuple[str, ...]:
    """Every plugin pgx's own distribution registers, by entry-point name (read, not listed, so
    that a new built-in plugin is disabled here the day it is added)."""
    return tuple(sorted(ep.name for ep in entry_points(group=GROUP) if ep.dist is not None and ep.dist.name == "pgx"))


BUILT_IN = built_in_plugins()


@pytest.fixture(autouse=True)
def _core_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGX_DISABLE_PLUGINS", ",".join(BUILT_IN))
