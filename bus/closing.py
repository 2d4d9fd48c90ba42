"""A resource that closes itself when used as a context manager, on every path."""

from __future__ import annotations

from types import TracebackType
from typing import Self

__all__ = ["Closing"]


class Closing:
    """Mixin for anything with `close()`: `with thing:` closes it however the block ends."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object holds (sockets, files); safe to call more than once."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
