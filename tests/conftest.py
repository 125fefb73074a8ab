"""Shared fixtures: a per-session data cache and node state (privacy ledgers), so tests never
touch ~/.cache or ~/.local/state."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _qfl_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("QFL_CACHE_DIR", str(tmp_path_factory.mktemp("qfl-cache")))
    mp.setenv("QFL_STATE_DIR", str(tmp_path_factory.mktemp("qfl-state")))
    yield
    mp.undo()


@pytest.fixture
def defaults():
    """The run-config defaults declared in pyproject.toml."""
    from qfl.launch.config import app_defaults
    from qfl.launcher import PROJECT_DIR

    return app_defaults(PROJECT_DIR)


@pytest.fixture
def task_identity():
    """Flower's runtime sets the process's task identity before it calls an app;
    messages built outside a Flower process need the same."""
    from qfl.common.flower_internals import task_identity as identity

    with identity():
        yield
