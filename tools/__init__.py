"""The `vigil` command line (`vigil.tools.cli`) and the tools behind its commands."""

__all__: list[str] = []
