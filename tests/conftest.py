"""Shared fixtures: a per-session data cache, so tests never touch ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _qfl_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("QFL_CACHE_DIR", str(tmp_path_factory.mktemp("qfl-cache")))
    yield
    mp.undo()


@pytest.fixture
def defaults():
    """The run-config defaults declared in pyproject.toml."""
    from server.launcher import PROJECT_DIR, app_defaults

    return app_defaults(PROJECT_DIR)
