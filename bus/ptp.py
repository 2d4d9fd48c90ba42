"""Read the PTP hardware clock (or a configured fallback clock) through libc, without a PTP library.

A PHC is a character device, `/dev/ptpN`. Linux exposes it as a dynamic POSIX clock whose id is
derived from an open file descriptor (`((~fd) << 3) | 3`, the kernel's `FD_TO_CLOCKID`), so the
clock is read with plain `clock_gettime`. The PHC-system offset comes from the
`PTP_SYS_OFFSET` ioctl, which brackets each PHC read between two system-clock reads inside the
kernel; where the ioctl is refused the same bracketing is done from user space.

A fallback clock (`CLOCK_TAI`, then `CLOCK_REALTIME`) is used only when the configuration names
it, and `PtpClock.source` says which clock stamps the entries so the store can record it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import functools
import os
import time
from collections.abc import Callable
from typing import Final, Literal, Protocol

import msgspec

from vigil.errors import VigilError

__all__ = [
    "CLOCK_REALTIME",
    "CLOCK_TAI",
    "PTP_SYS_OFFSET",
    "ClockConfig",
    "ClockError",
    "ClockLib",
    "ClockOffset",
    "ClockSource",
    "LibcClockLib",
    "PtpClock",
    "fd_to_clockid",
]

CLOCK_REALTIME: Final = 0
CLOCK_TAI: Final = 11

_PTP_MAX_SAMPLES: Final = 25
_PTP_CLK_MAGIC: Final = ord("=")
_IOC_WRITE: Final = 1


class _PtpClockTime(ctypes.Structure):
    _fields_ = (("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("reserved", ctypes.c_uint32))


class _PtpSysOffset(ctypes.Structure):
    _fields_ = (
        ("n_samples", ctypes.c_uint),
        ("rsv", ctypes.c_uint * 3),
        ("ts", _PtpClockTime * (2 * _PTP_MAX_SAMPLES + 1)),
    )


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _iow(kind: int, number: int, size: int) -> int:
    # The kernel's _IOW(): direction in bits 30-31, size in 16-29, type in 8-15, number in 0-7.
    return (_IOC_WRITE << 30) | (size << 16) | (kind << 8) | number


PTP_SYS_OFFSET: Final = _iow(_PTP_CLK_MAGIC, 5, ctypes.sizeof(_PtpSysOffset))


def fd_to_clockid(fd: int) -> int:
    """The dynamic POSIX clock id of an open PHC descriptor (the kernel's FD_TO_CLOCKID)."""
    return ((~fd) << 3) | 3


class ClockSource(enum.IntEnum):
    """Which clock stamped an entry; stored in every entry header as one byte."""

    PHC = 1
    TAI = 2
    REALTIME = 3


_FALLBACK_IDS: Final[dict[str, tuple[ClockSource, int]]] = {
    "TAI": (ClockSource.TAI, CLOCK_TAI),
    "REALTIME": (ClockSource.REALTIME, CLOCK_REALTIME),
}


class ClockConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which PHC to read and which fallback clocks, in order, may stand in for it."""

    ptp_device: str = "/dev/ptp0"
    fallback: tuple[Literal["TAI", "REALTIME"], ...] = ("TAI", "REALTIME")


class ClockError(VigilError):
    """No configured clock can be read; names the device and the reason."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"{device}: {reason}")
        self.device = device
        self.reason = reason


class ClockOffset(msgspec.Struct, frozen=True, kw_only=True):
    """One PHC-system comparison: `offset_ns` = clock - system, `delay_ns` = bracketing window."""

    clock_ns: int
    system_ns: int
    offset_ns: int
    delay_ns: int
    method: Literal["ioctl", "bracket"]


class ClockLib(Protocol):
    """The libc calls the clock needs; the real one is `LibcClockLib`, tests may pass a double."""

    def open(self, path: str) -> int:
        """Open a PHC device read-only and return its descriptor; raises OSError."""
        ...

    def close(self, fd: int) -> None:
        """Close a descriptor returned by `open`."""
        ...

    def clock_gettime_ns(self, clock_id: int) -> int:
        """`clock_gettime(clock_id)` in nanoseconds; raises OSError."""
        ...

    def sys_offset(self, fd: int, samples: int) -> list[tuple[int, int, int]]:
        """`PTP_SYS_OFFSET`: (system before, phc, system after) triples; raises OSError."""
        ...

    def reader(self, clock_id: int) -> Callable[[], int]:
        """A no-argument callable reading `clock_id`, for the stamping hot path."""
        ...


class LibcClockLib:
    """The real calls, through ctypes on the process's libc."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(name, use_errno=True)
        gettime = self._libc.clock_gettime
        gettime.argtypes = (ctypes.c_int, ctypes.POINTER(_Timespec))
        gettime.restype = ctypes.c_int
        self._gettime = gettime
        ioctl = self._libc.ioctl
        ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
        ioctl.restype = ctypes.c_int
        self._ioctl = ioctl
        # One timespec reused by every read: the hot path then allocates nothing.
        self._ts = _Timespec()
        self._ts_ref = ctypes.byref(self._ts)

    def open(self, path: str) -> int:
        """Open a PHC device read-only (`O_CLOEXEC`) and return its descriptor."""
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def close(self, fd: int) -> None:
        """Close a descriptor returned by `open`."""
        os.close(fd)

    def clock_gettime_ns(self, clock_id: int) -> int:
        """`clock_gettime(clock_id)` through ctypes, in nanoseconds."""
        if self._gettime(clock_id, self._ts_ref) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        ts = self._ts
        return int(ts.tv_sec) * 1_000_000_000 + int(ts.tv_nsec)

    def reader(self, clock_id: int) -> Callable[[], int]:
        """`time.clock_gettime_ns` bound to the clock: the same libc call, minus ctypes marshalling.

        CPython passes the id straight to clock_gettime, so a dynamic PHC id works as well as a
        static one; the ctypes read above is what `PtpClock.open` validates the clock with.
        """
        return functools.partial(time.clock_gettime_ns, clock_id)

    def sys_offset(self, fd: int, samples: int) -> list[tuple[int, int, int]]:
        """`PTP_SYS_OFFSET` with `samples` samples (1..25)."""
        req = _PtpSysOffset()
        req.n_samples = samples
        if self._ioctl(fd, PTP_SYS_OFFSET, ctypes.addressof(req)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        stamps = [int(t.sec) * 1_000_000_000 + int(t.nsec) for t in req.ts[: 2 * samples + 1]]
        # The kernel interleaves system, phc, system, phc, ..., system.
        return [(stamps[2 * i], stamps[2 * i + 1], stamps[2 * i + 2]) for i in range(samples)]


# implements: SR-TIM-001
class PtpClock:
    """The clock that stamps log entries: the configured PHC, or a configured fallback.

    Use as a context manager; `now_ns()` is the hot path and is chosen once at open.
    """

    def __init__(
        self, source: ClockSource, clock_id: int, device: str, fd: int | None, lib: ClockLib
    ) -> None:
        self.source = source
        self.clock_id = clock_id
        self.device = device
        self._fd = fd
        self._lib = lib
        # The stamping hot path: bound once, one C call per read.
        self.read: Callable[[], int] = lib.reader(clock_id)

    @classmethod
    def open(cls, config: ClockConfig, lib: ClockLib | None = None) -> PtpClock:
        """Open the PHC named in `config`, else the first readable fallback it allows.

        Raises ClockError when neither the PHC nor any configured fallback can be read.
        """
        lib = lib if lib is not None else LibcClockLib()
        reasons: list[str] = []
        try:
            fd = lib.open(config.ptp_device)
        except OSError as exc:
            reasons.append(f"{config.ptp_device}: {exc.strerror or exc}")
        else:
            clock_id = fd_to_clockid(fd)
            try:
                lib.clock_gettime_ns(clock_id)
            except OSError as exc:
                lib.close(fd)
                reasons.append(f"{config.ptp_device}: clock_gettime: {exc.strerror or exc}")
            else:
                return cls(ClockSource.PHC, clock_id, config.ptp_device, fd, lib)
        for name in config.fallback:
            source, clock_id = _FALLBACK_IDS[name]
            try:
                lib.clock_gettime_ns(clock_id)
            except OSError as exc:
                reasons.append(f"CLOCK_{name}: {exc.strerror or exc}")
                continue
            return cls(source, clock_id, f"CLOCK_{name}", None, lib)
        raise ClockError(config.ptp_device, "; ".join(reasons) or "no clock configured")

    def now_ns(self) -> int:
        """The clock's current time in nanoseconds (TAI for a PHC disciplined by ptp4l)."""
        return self.read()

    def offset(self, samples: int = 5) -> ClockOffset:
        """Compare this clock with CLOCK_REALTIME, keeping the sample with the narrowest bracket.

        A PHC is asked through `PTP_SYS_OFFSET`; a fallback clock, or a PHC whose driver refuses
        the ioctl, is bracketed by two system reads from user space.
        """
        if not 1 <= samples <= _PTP_MAX_SAMPLES:
            raise ValueError(f"samples must be 1..{_PTP_MAX_SAMPLES}, got {samples}")
        triples: list[tuple[int, int, int]] | None = None
        method: Literal["ioctl", "bracket"] = "ioctl"
        if self._fd is not None:
            try:
                triples = self._lib.sys_offset(self._fd, samples)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    raise
        if triples is None:
            method = "bracket"
            read = self._lib.clock_gettime_ns
            triples = []
            for _ in range(samples):
                before = read(CLOCK_REALTIME)
                clock = read(self.clock_id)
                triples.append((before, clock, read(CLOCK_REALTIME)))
        before, clock, after = min(triples, key=lambda t: t[2] - t[0])
        system = before + (after - before) // 2
        return ClockOffset(
            clock_ns=clock,
            system_ns=system,
            offset_ns=clock - system,
            delay_ns=after - before,
            method=method,
        )

    def close(self) -> None:
        """Close the PHC descriptor, if one is open; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._lib.close(fd)

    def __enter__(self) -> PtpClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
