"""The log store's sealing loop: records in, consecutive sealed entries out.

Two implementations keep one contract: `_sealc.seal` (C over OpenSSL, built with the package) and
`seal_python` below, the readable reference that the store falls back to where the extension is
not built and that tests hold the compiled loop to, byte for byte. `seal` is the faster one
available; `SEALER` says which.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Final, Literal

from vigil.nodes.logger._format import ENTRY_HEADER, ENTRY_MAGIC, ENTRY_VERSION

__all__ = ["SEALER", "Names", "Record", "SealFn", "Sealed", "seal", "seal_python"]

# One entry to seal: node, event (schema id or integer code), payload, trace id.
Record = tuple[str, str | int, bytes | memoryview, bytes]
# (node, event) -> (node length, event length, node || event as UTF-8): names interned once.
Names = dict[tuple[str, str | int], tuple[int, int, bytes]]
# (index reached, bytes of `out` used, last sequence number, last chain value).
Sealed = tuple[int, int, int, bytes]
SealFn = Callable[
    [
        Sequence[Record], int, int, Names, Callable[[], int], Callable[[bytes | memoryview], int],
        int, int, bytes, bytearray | memoryview,
    ],
    Sealed,
]  # fmt: skip

_PREFIX: Final = struct.Struct("<4sBBBBQQ16sII32s")
_STAMP: Final = struct.Struct("<Q")
_ZERO_TRACE: Final = bytes(16)
_PADS: Final = tuple(bytes(n) for n in range(8))
_HEADER: Final = ENTRY_HEADER.size


# implements: SR-LOG-001
def seal_python(  # noqa: PLR0917 -- the compiled loop's positional (METH_FASTCALL) signature
    records: Sequence[Record],
    index: int,
    stop: int,
    names: Names,
    now: Callable[[], int],
    crc: Callable[[bytes | memoryview], int],
    clock: int,
    seq: int,
    chain: bytes,
    out: bytearray | memoryview,
) -> Sealed:
    """Seal `records[index:stop]` as the entries after `seq`/`chain`, each stamped by `now()`,
    into the start of `out` (the room left in the current group).

    Stops early, without raising, at a record whose (node, event) is not in `names`, whose
    trace id is neither empty nor 16 bytes, or whose entry does not fit in what is left of
    `out`; the caller deals with that record and calls again. Anything else wrong with a record
    raises here, and this call's entries are then not returned (the compiled loop stops
    instead, keeping them, and the caller calls this one for that record alone).
    """
    pack, sha, stamp, pads = _PREFIX.pack, hashlib.sha256, _STAMP.pack, _PADS
    parts: list[bytes | memoryview] = []
    room, used = len(out), 0
    while index < stop:
        node, event, payload, trace = records[index]
        entry_names = names.get((node, event))
        if entry_names is None or (trace and len(trace) != 16):
            break
        node_len, event_len, name_bytes = entry_names
        plen = len(payload)
        size = _HEADER + node_len + event_len + plen
        padded = (size + 7) & ~7
        if used + padded > room:
            break
        ts = now()
        prefix = pack(
            ENTRY_MAGIC, ENTRY_VERSION, clock, node_len, event_len, seq + 1, ts,
            trace or _ZERO_TRACE, plen, crc(payload), sha(stamp(ts) + payload).digest(),
        )  # fmt: skip
        chain = sha(chain + prefix + name_bytes).digest()
        seq += 1
        parts += (prefix, chain, name_bytes, payload, pads[padded - size])
        used += padded
        index += 1
    out[:used] = b"".join(parts)
    return index, used, seq, chain


try:
    from vigil.nodes.logger._sealc import seal as _compiled
except ImportError:  # the package was not built (run from a source tree): the reference serves
    seal: SealFn = seal_python
    SEALER: Literal["compiled", "python"] = "python"
else:
    seal = _compiled
    SEALER = "compiled"
