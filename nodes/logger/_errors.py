"""The log store's own failures: used after close, full under retention, refused by the medium."""

from __future__ import annotations

from vigil.errors import VigilError

__all__ = ["StoreClosed", "StoreFull", "StoreIOError", "StoreNoSpace"]


class StoreClosed(VigilError):
    """The store was used after `close`."""


class StoreFull(VigilError):
    """Retention 'exported': the oldest group holds entries no export has preserved yet."""

    def __init__(self, oldest_seq: int, exported_seq: int) -> None:
        super().__init__(
            f"the oldest group (from seq {oldest_seq}) is not exported (exported up to "
            f"{exported_seq}); run `vigil log export --mark`"
        )
        self.oldest_seq = oldest_seq
        self.exported_seq = exported_seq


class StoreIOError(VigilError):
    """The medium refused a write or a sync; entries after `committed_seq` may be lost."""

    def __init__(self, committed_seq: int, cause: OSError) -> None:
        super().__init__(f"store I/O failed after seq {committed_seq}: {cause}")
        self.committed_seq = committed_seq
        self.cause = cause


class StoreNoSpace(StoreIOError):
    """The file system cannot hold a new store: nothing was left behind."""

    def __init__(self, path: str, size: int, free: int, cause: OSError | None = None) -> None:
        cause = cause or OSError(28, "No space left on device")
        VigilError.__init__(
            self,
            f"cannot create the log store {path}: it needs {size} bytes and the file system "
            f"has {free} free",
        )
        self.committed_seq = 0
        self.cause = cause
        self.path = path
        self.size = size
        self.free = free
