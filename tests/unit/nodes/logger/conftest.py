"""Fixtures for the log store tests: small stores on real files and on the simulated disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.nodes.logger.store import StoreConfig
from vigil.testing.crashsim import SimClock, SimMonotonic


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    """A fresh store file path in the test's directory."""
    return str(tmp_path / "store.vlog")


@pytest.fixture
def small_config(store_path: str) -> StoreConfig:
    """A 64 KiB store of 4 KiB groups, committing inline."""
    return StoreConfig(
        path=store_path, size_bytes=64 * 1024, group_bytes=4096, background_commit=False
    )


@pytest.fixture
def clock() -> SimClock:
    """A simulated PHC."""
    return SimClock()


@pytest.fixture
def mono() -> SimMonotonic:
    """A monotonic clock that advances 1 ms per reading."""
    return SimMonotonic()
