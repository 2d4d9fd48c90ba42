"""The worker's memory model: a version loads beside the serving one only when both fit."""

from __future__ import annotations

import pytest

from vigil.nodes.worker._engine import Device, EngineConfig
from vigil.nodes.worker._models import ModelManager
from vigil.schemas import ModelAnnouncement

pytestmark = pytest.mark.verifies("SR-MDL-002")

MB = 1 << 20


def _manager(budget: int, free: int) -> ModelManager:
    manager = ModelManager(
        EngineConfig(),
        warm=(8, 8),
        event=lambda *args: None,
        budget_bytes=budget,
        free_memory=lambda device: free,
    )
    manager.serving = _version(10 * MB)
    manager.footprint = 40 * MB  # as measured when it loaded
    return manager


def _version(size: int) -> ModelAnnouncement:
    return ModelAnnouncement(name="m", version="v", path="/x", sha256="0" * 64, size=size)


def test_estimate_scales_the_measured_footprint_by_size() -> None:
    """A new version is expected to take the serving one's footprint, scaled by file size,
    and never less than three times its file."""
    manager = _manager(0, 1 << 40)
    assert manager.estimate(_version(20 * MB)) == 80 * MB
    assert manager.estimate(_version(1 * MB)) == 4 * MB
    assert manager.estimate(_version(0)) == 0


@pytest.mark.parametrize(
    ("budget", "free", "beside"),
    [
        (0, 1 << 40, True),  # no budget, plenty free
        (0, 30 * MB, False),  # not free on the device
        (80 * MB, 1 << 40, True),  # 40 + 40 within the budget
        (79 * MB, 1 << 40, False),  # 40 + 40 over it
    ],
)
def test_fits_beside_needs_free_memory_and_the_budget(budget: int, free: int, beside: bool) -> None:
    """Both footprints must fit the budget and the estimate the free memory."""
    assert _manager(budget, free).fits_beside(_version(10 * MB)) is beside


def test_a_cpu_manager_measures_host_memory() -> None:
    """On the CPU the footprint is measured in the process's resident memory."""
    from vigil.nodes.worker._models import used_memory_bytes  # noqa: PLC0415

    assert used_memory_bytes(Device.CPU) > 0
