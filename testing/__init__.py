"""Fixtures for tests and benches: model generators, simulated media, pipeline launchers.

Never imported by runtime code. Import the module you need (`vigil.testing.modelgen`, ...):
nothing is re-exported here.
"""

__all__: list[str] = []
