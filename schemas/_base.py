"""Base classes shared by every bus message and every typed configuration."""

from __future__ import annotations

import msgspec

__all__ = ["Config", "Message"]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A bus message body.

    Unknown fields are ignored so that a reader of version n decodes version n+1 of a message:
    messages evolve by appending fields with defaults.
    """


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A typed configuration: an unknown key is an error, never silently ignored."""
