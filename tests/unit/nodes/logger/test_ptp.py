"""The PTP clock reader: the real ctypes path on the fallback clocks, the PHC path via a double."""

from __future__ import annotations

import errno
import glob
import os
import time
from collections.abc import Callable

import pytest

from vigil.bus.ptp import (
    CLOCK_REALTIME,
    CLOCK_TAI,
    PTP_SYS_OFFSET,
    ClockConfig,
    ClockError,
    ClockSource,
    LibcClockLib,
    PtpClock,
    fd_to_clockid,
)

pytestmark = pytest.mark.verifies("SR-TIM-001")

MISSING = "/dev/ptp-does-not-exist"


class FakePhcLib:
    """A PHC that cannot exist here, behind the same calls as LibcClockLib."""

    def __init__(self, *, ioctl_errno: int | None = None) -> None:
        self.fd = 9
        self.open_fds: set[int] = set()
        self.ioctl_errno = ioctl_errno
        self.phc_ns = 1_000_000_000_000
        self.sys_ns = 999_000_000_000

    def open(self, path: str) -> int:
        if path != "/dev/ptp0":
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        self.open_fds.add(self.fd)
        return self.fd

    def close(self, fd: int) -> None:
        self.open_fds.remove(fd)

    def clock_gettime_ns(self, clock_id: int) -> int:
        if clock_id == fd_to_clockid(self.fd) and self.fd in self.open_fds:
            self.phc_ns += 100
            return self.phc_ns
        if clock_id == CLOCK_REALTIME:
            self.sys_ns += 100
            return self.sys_ns
        raise OSError(errno.EINVAL, "Invalid argument")

    def reader(self, clock_id: int) -> Callable[[], int]:
        return lambda: self.clock_gettime_ns(clock_id)

    def sys_offset(self, fd: int, samples: int) -> list[tuple[int, int, int]]:
        if self.ioctl_errno is not None:
            raise OSError(self.ioctl_errno, os.strerror(self.ioctl_errno))
        # Sample 1 has the narrowest bracket.
        return [
            (100 + 10 * i, 1_000 + 10 * i, 100 + 10 * i + (8 if i == 1 else 50))
            for i in range(samples)
        ]


def test_dynamic_clock_id_follows_the_kernel_formula() -> None:
    """The dynamic clock id of fd 3 is ((~3) << 3) | 3."""
    assert fd_to_clockid(3) == ((~3) << 3) | 3 == -29


def test_sys_offset_request_number_matches_the_kernel_header() -> None:
    """PTP_SYS_OFFSET is _IOW('=', 5, struct ptp_sys_offset) = 0x43403d05."""
    assert PTP_SYS_OFFSET == 0x43403D05


def test_ctypes_reads_clock_tai_like_the_kernel() -> None:
    """The ctypes clock_gettime on CLOCK_TAI agrees with the time module within a second."""
    lib = LibcClockLib()
    assert abs(lib.clock_gettime_ns(CLOCK_TAI) - time.clock_gettime_ns(CLOCK_TAI)) < 1_000_000_000


def test_ctypes_reports_an_invalid_clock_as_oserror() -> None:
    """clock_gettime on a dynamic id with no descriptor behind it raises OSError (EINVAL)."""
    with pytest.raises(OSError) as info:
        LibcClockLib().clock_gettime_ns(fd_to_clockid(987))
    assert info.value.errno == errno.EINVAL


def test_missing_phc_falls_back_to_tai_when_configured() -> None:
    """Without the device, the first configured fallback (TAI) stamps, and says so."""
    with PtpClock.open(ClockConfig(ptp_device=MISSING)) as clock:
        assert clock.source is ClockSource.TAI
        assert abs(clock.now_ns() - time.clock_gettime_ns(CLOCK_TAI)) < 1_000_000_000


def test_realtime_fallback_is_used_when_it_is_the_only_one() -> None:
    """A REALTIME-only fallback list stamps from CLOCK_REALTIME."""
    config = ClockConfig(ptp_device=MISSING, fallback=("REALTIME",))
    with PtpClock.open(config) as clock:
        assert clock.source is ClockSource.REALTIME


def test_no_fallback_configured_means_no_clock() -> None:
    """Without the device and with no fallback the open fails with ClockError naming the device."""
    with pytest.raises(ClockError) as info:
        PtpClock.open(ClockConfig(ptp_device=MISSING, fallback=()))
    assert info.value.device == MISSING


def test_fallback_offset_is_bracketed_from_user_space() -> None:
    """A fallback clock's offset comes from bracketing reads, with a plausible window."""
    with PtpClock.open(ClockConfig(ptp_device=MISSING, fallback=("REALTIME",))) as clock:
        offset = clock.offset()
    assert offset.method == "bracket"
    assert abs(offset.offset_ns) < 1_000_000_000
    assert 0 <= offset.delay_ns < 1_000_000_000


def test_phc_is_read_through_its_dynamic_clock_id() -> None:
    """With the device present the PHC stamps, read through FD_TO_CLOCKID of its descriptor."""
    lib = FakePhcLib()
    with PtpClock.open(ClockConfig(), lib) as clock:
        assert clock.source is ClockSource.PHC
        assert clock.clock_id == fd_to_clockid(lib.fd)
        first = clock.now_ns()
        assert clock.now_ns() > first


def test_phc_offset_keeps_the_narrowest_ioctl_sample() -> None:
    """PTP_SYS_OFFSET samples are reduced to the one with the narrowest system bracket."""
    with PtpClock.open(ClockConfig(), FakePhcLib()) as clock:
        offset = clock.offset(samples=3)
    assert (offset.method, offset.delay_ns, offset.clock_ns, offset.system_ns) == (
        "ioctl", 8, 1_010, 114,
    )  # fmt: skip
    assert offset.offset_ns == 1_010 - 114


def test_phc_offset_brackets_when_the_driver_refuses_the_ioctl() -> None:
    """A driver without PTP_SYS_OFFSET (EOPNOTSUPP) gets user-space bracketing instead."""
    with PtpClock.open(ClockConfig(), FakePhcLib(ioctl_errno=errno.EOPNOTSUPP)) as clock:
        assert clock.offset().method == "bracket"


def test_closing_releases_the_phc_descriptor() -> None:
    """Leaving the context closes the device descriptor."""
    lib = FakePhcLib()
    with PtpClock.open(ClockConfig(), lib):
        assert lib.open_fds == {lib.fd}
    assert lib.open_fds == set()


@pytest.mark.skipif(not glob.glob("/dev/ptp*"), reason="no PTP hardware clock on this machine")
def test_real_phc_is_readable() -> None:
    """Where a /dev/ptp* exists, it opens and reads through the real ctypes path."""
    device = sorted(glob.glob("/dev/ptp*"))[0]
    try:
        clock = PtpClock.open(ClockConfig(ptp_device=device, fallback=()))
    except ClockError as exc:
        pytest.skip(f"{device} is not readable here: {exc.reason}")
    with clock:
        assert clock.source is ClockSource.PHC
        assert clock.now_ns() > 0
        assert clock.offset().delay_ns >= 0
