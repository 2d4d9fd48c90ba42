"""The node processes of vigil: one package per kind, each declaring its `KIND`.

Importing a node package loads only its declaration (configuration and contract); a node
process imports the implementation of its own kind alone, so the inference engine is loaded by
workers alone. `vigil.nodes.contract` holds the words every node, the launcher and the tools
share; `vigil.nodes.kinds` finds every kind.
"""

from vigil.nodes._logging import LogFormat, configure_logging

__all__ = ["LogFormat", "configure_logging"]
