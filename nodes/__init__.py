"""The node processes of vigil, one module or package per kind (see `_entry.NODE_KINDS`).

Nothing is imported here: a node process imports only its own kind, so the inference engine
is loaded by workers alone.
"""

__all__: list[str] = []
