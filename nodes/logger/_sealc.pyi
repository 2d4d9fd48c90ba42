from collections.abc import Callable, Sequence

from vigil.nodes.logger._sealer import Names, Record, Sealed

def seal(
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
    /,
) -> Sealed: ...
