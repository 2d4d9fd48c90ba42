"""vigil: a safety-minded ML inference pipeline built as a ZeroMQ message bus."""

__all__ = ["__version__"]

__version__ = "0.1.0"
