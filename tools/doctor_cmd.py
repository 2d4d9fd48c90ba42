"""`vigil doctor`: check that a target can run vigil, and say how to fix what is wrong.

Each check gives a finding (`vigil.launch.Finding`) at level ok, warning (vigil runs, but with
less than it could: a fallback clock, CPU only) or error (something vigil relies on is broken or
unsafe: an unreadable PHC, a world-readable private key, a run directory others can enter, a
disk too small for the store). The exit status is 1 when any check finds an error, so the
command can gate a deployment script.
"""

from __future__ import annotations

import glob
import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import click
import msgspec
import psutil
import zmq
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vigil.bus.ptp import ClockConfig, ClockError, ClockLib, PtpClock
from vigil.bus.rundir import RunGraph, find_run_dir
from vigil.launch import Finding, Level
from vigil.models.keys import (
    PRIVATE_SUFFIX,
    KeyFileError,
    load_private_key,
    load_trusted_keys,
)
from vigil.nodes.logger import SEALER
from vigil.nodes.logger.store import StoreConfig
from vigil.tools._options import audited_keys_option, json_option, run_dir_option
from vigil.tools._tables import console, fixed, table, text

__all__ = [
    "check_clock",
    "check_disk",
    "check_gpu",
    "check_keys",
    "check_ptp",
    "check_run_dir",
    "check_versions",
    "doctor",
]

# TAI - UTC since 2017-01-01; the leap-second table has not changed since, and the CGPM has
# decided to stop inserting leap seconds by 2035.
TAI_UTC_S: Final = 37
_CLOCKSOURCE: Final = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource")
# Clock sources whose reads are cheap and fine-grained enough to stamp log entries.
_GOOD_CLOCKSOURCES: Final = frozenset(
    {"tsc", "arch_sys_counter", "kvm-clock", "hyperv_clocksource_tsc_page"}
)
_MIN_PYZMQ: Final = (26, 0)
_MIN_MSGSPEC: Final = (0, 19)
_NVIDIA_SMI_TIMEOUT_S: Final = 10
_VERSION: Final = re.compile(r"(?:^|\.)(\d+)")
_DEFAULT_STORE_BYTES: Final = StoreConfig(path="log.store").size_bytes


def _ok(check: str, detail: str) -> Finding:
    return Finding(level=Level.OK, check=check, detail=detail)


def _warn(check: str, detail: str, fix: str) -> Finding:
    return Finding(level=Level.WARNING, check=check, detail=detail, fix=fix)


def _fail(check: str, detail: str, fix: str) -> Finding:
    return Finding(level=Level.ERROR, check=check, detail=detail, fix=fix)


def _version(text: str) -> tuple[int, ...]:
    """The leading numeric components of a version string ("1.2.3rc1" -> (1, 2, 3))."""
    return tuple(int(part) for part in _VERSION.findall(text)[:3])


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


# -- versions ----------------------------------------------------------------------------------


def check_versions(sealer: str = SEALER) -> list[Finding]:
    """Python, pyzmq/libzmq (and CURVE support), msgspec, and the log store's sealing loop."""
    findings: list[Finding] = []
    py = sys.version_info
    py_text = f"{py.major}.{py.minor}.{py.micro}"
    if py < (3, 11):
        findings.append(_fail("python", py_text, "install Python 3.11 or newer"))
    else:
        findings.append(_ok("python", py_text))
    pyzmq, libzmq = zmq.pyzmq_version(), zmq.zmq_version()
    if _version(pyzmq) < _MIN_PYZMQ:
        findings.append(
            _fail("pyzmq", f"pyzmq {pyzmq}, libzmq {libzmq}", "pip install 'pyzmq>=26'")
        )
    else:
        findings.append(_ok("pyzmq", f"pyzmq {pyzmq}, libzmq {libzmq}"))
    if zmq.has("curve"):
        findings.append(_ok("zmq curve", "CurveZMQ available for tcp:// links"))
    else:
        findings.append(
            _warn(
                "zmq curve",
                "libzmq built without CURVE: multi-host links cannot be authenticated",
                "install pyzmq's wheel (bundles libzmq with libsodium) or a libzmq with CURVE",
            )
        )
    ms = msgspec.__version__
    if _version(ms) < _MIN_MSGSPEC:
        findings.append(_fail("msgspec", ms, "pip install 'msgspec>=0.19'"))
    else:
        findings.append(_ok("msgspec", ms))
    if sealer == "compiled":
        findings.append(_ok("log sealer", "compiled (C over OpenSSL SHA-256)"))
    else:
        findings.append(
            _warn(
                "log sealer",
                "Python reference loop: the extension is not built, about half the log rate",
                "reinstall vigil with a C compiler and OpenSSL headers (libssl-dev)",
            )
        )
    return findings


# -- clocks ------------------------------------------------------------------------------------


def check_ptp(
    devices: Iterable[str],
    *,
    max_offset_ms: float = 1.0,
    tai_offset_s: int = TAI_UTC_S,
    lib: ClockLib | None = None,
) -> list[Finding]:
    """Each PHC opens, reads, and agrees with the system clock (PHC in TAI, system in UTC)."""
    found = sorted(devices)
    if not found:
        return [
            _warn(
                "ptp",
                "no PTP hardware clock (/dev/ptp*): the logger stamps from a fallback clock "
                "(CLOCK_TAI), recorded in every entry",
                "use a NIC with a hardware clock and run ptp4l and phc2sys, or accept the "
                "fallback clock for this target",
            )
        ]
    findings: list[Finding] = []
    limit_ns = max_offset_ms * 1e6
    for device in found:
        check = f"ptp {device}"
        try:
            with PtpClock.open(ClockConfig(ptp_device=device, fallback=()), lib) as clock:
                offset = clock.offset()
        except ClockError as exc:
            findings.append(
                _fail(
                    check,
                    f"cannot read the clock: {exc.reason}",
                    f"let the vigil user read {device} (a udev rule giving it a group)",
                )
            )
            continue
        except OSError as exc:
            findings.append(
                _fail(check, f"PTP_SYS_OFFSET failed: {exc.strerror or exc}", "check the driver")
            )
            continue
        tai_error = offset.offset_ns - tai_offset_s * 1_000_000_000
        how = f"{offset.method}, read window {offset.delay_ns / 1e3:.1f} us"
        if abs(tai_error) <= limit_ns:
            findings.append(
                _ok(
                    check,
                    f"PHC keeps TAI: {tai_error / 1e3:+.1f} us from system + {tai_offset_s} s "
                    f"({how})",
                )
            )
        elif abs(offset.offset_ns) <= limit_ns:
            findings.append(
                _warn(
                    check,
                    f"PHC within {offset.offset_ns / 1e3:+.1f} us of the system clock: it keeps "
                    f"UTC, not TAI ({how})",
                    "run ptp4l in the PTP (TAI) timescale and phc2sys with -w, so the offset is "
                    "taken from the grandmaster",
                )
            )
        else:
            findings.append(
                _fail(
                    check,
                    f"PHC - system = {offset.offset_ns / 1e9:+.6f} s: neither TAI nor UTC within "
                    f"{max_offset_ms} ms ({how})",
                    f"synchronise it: ptp4l -i IFACE, then phc2sys -s {device} -c CLOCK_REALTIME "
                    "-w (or -s CLOCK_REALTIME -c the PHC on a grandmaster)",
                )
            )
    return findings


def _tai_offset_s() -> int:
    before = time.clock_gettime_ns(time.CLOCK_REALTIME)
    tai = time.clock_gettime_ns(time.CLOCK_TAI)
    after = time.clock_gettime_ns(time.CLOCK_REALTIME)
    return round((tai - (before + after) // 2) / 1e9)


def check_clock(
    *,
    tai_offset: Callable[[], int] = _tai_offset_s,
    clocksource: Path = _CLOCKSOURCE,
) -> list[Finding]:
    """The kernel's TAI offset (what a fallback stamp is worth) and its clock source."""
    findings: list[Finding] = []
    try:
        offset = tai_offset()
    except (OSError, AttributeError) as exc:
        findings.append(
            _warn("clock tai", f"CLOCK_TAI cannot be read: {exc}", "use a Linux kernel >= 3.10")
        )
    else:
        if offset == TAI_UTC_S:
            findings.append(_ok("clock tai", f"CLOCK_TAI = UTC + {offset} s"))
        elif offset == 0:
            findings.append(
                _warn(
                    "clock tai",
                    "kernel TAI offset is 0: CLOCK_TAI equals UTC, so fallback stamps are "
                    f"{TAI_UTC_S} s off TAI",
                    "have the time daemon set it (chronyd: `leapsectz right/UTC`), or set it "
                    "at boot with adjtimex(2) ADJ_TAI",
                )
            )
        else:
            findings.append(
                _warn(
                    "clock tai",
                    f"kernel TAI offset is {offset} s, expected {TAI_UTC_S} s",
                    "check the leap-second table of chrony/ptp4l and the offset they set",
                )
            )
    try:
        source = clocksource.read_text().strip()
    except OSError:
        return findings
    if source in _GOOD_CLOCKSOURCES:
        findings.append(_ok("clocksource", source))
    else:
        findings.append(
            _warn(
                "clocksource",
                f"{source}: slow or coarse reads make stamps and deadlines less precise",
                "boot with a stable TSC (check dmesg for 'tsc unstable') or the platform's "
                "architected counter",
            )
        )
    return findings


# -- GPU ---------------------------------------------------------------------------------------

GpuMode = Literal["auto", "require", "skip"]


def _providers() -> list[str]:
    import onnxruntime  # noqa: PLC0415 - a heavy import only the GPU check needs

    providers: list[str] = onnxruntime.get_available_providers()
    return providers


def _cupy_version() -> str:
    cupy = importlib.import_module("cupy")
    return str(cupy.__version__)


def _smi_query(smi: str) -> str:
    done = subprocess.run(
        [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=_NVIDIA_SMI_TIMEOUT_S,
        check=True,
    )
    return "; ".join(line.strip() for line in done.stdout.splitlines() if line.strip())


def check_gpu(
    mode: GpuMode = "auto",
    *,
    providers: Callable[[], list[str]] = _providers,
    which: Callable[[str], str | None] = shutil.which,
    smi_query: Callable[[str], str] = _smi_query,
    cupy_version: Callable[[], str] = _cupy_version,
) -> list[Finding]:
    """onnxruntime's execution providers, the NVIDIA driver (nvidia-smi) and CuPy.

    `auto` expects a GPU stack only where an NVIDIA driver is installed; `require` fails
    without one; `skip` checks nothing.
    """
    if mode == "skip":
        return []
    findings: list[Finding] = []
    smi = which("nvidia-smi")
    want_gpu = mode == "require" or smi is not None
    bad = _fail if mode == "require" else _warn
    if smi is None:
        if mode == "require":
            findings.append(
                _fail("nvidia-smi", "no NVIDIA driver found", "install the NVIDIA driver")
            )
        else:
            findings.append(_ok("nvidia-smi", "no NVIDIA driver: a CPU target"))
    else:
        try:
            findings.append(_ok("nvidia-smi", smi_query(smi) or "driver present"))
        except (OSError, subprocess.SubprocessError) as exc:
            findings.append(
                bad("nvidia-smi", f"{smi} failed: {exc}", "check the driver (dmesg, nvidia-smi)")
            )
    available = providers()
    listed = ", ".join(available)
    if "CUDAExecutionProvider" in available:
        findings.append(_ok("onnxruntime", listed))
    elif want_gpu:
        findings.append(
            bad(
                "onnxruntime",
                f"no CUDAExecutionProvider ({listed}): workers run on the CPU",
                "pip install 'vigil[gpu]' (onnxruntime-gpu built for the installed CUDA)",
            )
        )
    else:
        findings.append(_ok("onnxruntime", listed))
    try:
        version = cupy_version()
    except (ImportError, OSError, RuntimeError) as exc:
        if want_gpu:
            findings.append(
                bad(
                    "cupy",
                    f"CuPy does not import ({exc}): preprocessing runs on the CPU",
                    "pip install 'vigil[gpu]' (cupy-cuda13x for CUDA 13)",
                )
            )
        else:
            findings.append(_ok("cupy", "not installed; not needed on a CPU target"))
    else:
        findings.append(_ok("cupy", version))
    return findings


# -- keys --------------------------------------------------------------------------------------


def _private_key_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.name.endswith(PRIVATE_SUFFIX)))
        else:
            files.append(path)
    return files


def check_keys(trusted: Path | None, private: Iterable[Path] = ()) -> list[Finding]:
    """The trusted key directory loads and only its owner may change it; private keys are
    0600 and usable."""
    findings: list[Finding] = []
    if trusted is not None:
        findings.extend(_check_trusted(trusted))
    for path in _private_key_files(private):
        findings.append(_check_private(path))
    return findings


def _check_trusted(trusted: Path) -> list[Finding]:
    check = f"trusted keys {trusted}"
    try:
        keys = load_trusted_keys(trusted)
    except KeyFileError as exc:
        return [
            _fail(
                check,
                exc.reason,
                "copy the signer's NAME.pub into this directory and make it readable "
                "(`vigil model keygen` makes a pair)",
            )
        ]
    findings = [_ok(check, f"{len(keys)} key(s): " + ", ".join(k.key_id[:12] for k in keys))]
    mode = stat.S_IMODE(trusted.stat().st_mode)
    if mode & 0o022:
        findings.append(
            _fail(
                check,
                f"mode {mode:04o}: others may add a key the loader would trust",
                f"chmod go-w {trusted}",
            )
        )
    if trusted.is_dir():
        strays = sorted(p.name for p in trusted.iterdir() if p.name.endswith(PRIVATE_SUFFIX))
        if strays:
            findings.append(
                _warn(
                    check,
                    f"private key(s) on the target: {', '.join(strays)}",
                    "move signing keys off the target; it needs only the *.pub files",
                )
            )
    return findings


def _check_private(path: Path) -> Finding:
    check = f"private key {path}"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        return _fail(check, exc.strerror or str(exc), "check the path")
    if mode & 0o077:
        return _fail(check, f"mode {mode:04o}: group or others may read it", f"chmod 600 {path}")
    try:
        head = path.read_bytes()[:64]
    except OSError as exc:
        return _fail(check, exc.strerror or str(exc), f"make {path} readable by its owner")
    if b"ENCRYPTED" in head:
        return _ok(check, f"mode {mode:04o}, encrypted (not opened)")
    try:
        key = load_private_key(path)
    except KeyFileError as exc:
        return _fail(check, exc.reason, "replace it with a P-384 key (`vigil model keygen`)")
    return _ok(check, f"mode {mode:04o}, P-384, key id {key.public.key_id[:12]}")


# -- run directory and disk --------------------------------------------------------------------


def check_run_dir(path: Path | None) -> list[Finding]:
    """The run directory exists, only its owner may enter it, and its graph.json reads."""
    if path is None or not path.is_dir():
        where = path if path is not None else "run/current"
        return [
            _warn(
                "run dir",
                f"no run directory at {where}",
                "start a launch (`vigil launch FILE`) or pass --run-dir",
            )
        ]
    findings: list[Finding] = []
    check = f"run dir {path}"
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        findings.append(
            _fail(
                check,
                f"mode {mode:04o}: other users can reach its ipc sockets",
                f"chmod 700 {path}",
            )
        )
    elif info.st_uid != os.getuid():
        findings.append(
            _warn(check, f"owned by uid {info.st_uid}, not you", "run vigil as the run's owner")
        )
    else:
        findings.append(_ok(check, f"mode {mode:04o}"))
    graph_path = path / "graph.json"
    try:
        graph = msgspec.json.decode(graph_path.read_bytes(), type=RunGraph)
    except FileNotFoundError:
        findings.append(_warn("graph.json", "absent: no launch has started here", "start a launch"))
    except OSError as exc:
        findings.append(_fail("graph.json", exc.strerror or str(exc), f"check {graph_path}"))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        findings.append(_fail("graph.json", f"unreadable: {exc}", "restart the launch"))
    else:
        nodes = len(graph.nodes)
        if psutil.pid_exists(graph.launcher_pid):
            findings.append(
                _ok("graph.json", f"{nodes} node(s), launcher pid {graph.launcher_pid}")
            )
        else:
            findings.append(
                _warn(
                    "graph.json",
                    f"stale: launcher pid {graph.launcher_pid} is gone",
                    "start a launch, or remove the old run directory",
                )
            )
    return findings


def check_disk(store: Path, size_bytes: int) -> list[Finding]:
    """The store's filesystem has room for the configured store size."""
    check = f"disk {store}"
    existing = store.stat().st_size if store.is_file() else 0
    need = max(0, size_bytes - existing)
    where = store.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return [_fail(check, exc.strerror or str(exc), f"check {where}")]
    after = usage.free - need
    summary = f"store {_size(size_bytes)}, {_size(usage.free)} free of {_size(usage.total)}"
    if after < 0:
        return [
            _fail(
                check,
                f"{summary}: {_size(-after)} short",
                "free space on this filesystem, move the store, or lower store.size_bytes",
            )
        ]
    if after < usage.total * 0.05:
        return [
            _warn(
                check,
                f"{summary}: less than 5 % left once the store is allocated",
                "free space: bags and logs share this filesystem",
            )
        ]
    return [_ok(check, summary)]


# -- the command -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Report:
    findings: list[Finding]

    @property
    def failed(self) -> bool:
        return any(f.level is Level.ERROR for f in self.findings)


_STYLE: Final = {Level.OK: "green", Level.WARNING: "yellow", Level.ERROR: "bold red"}


def findings_table(findings: list[Finding]) -> Table:
    """One row per finding: its level, what was checked, what was found and how to fix it."""
    rows = table(fixed("level"), text("check", max_width=24), text("finding"), title="vigil doctor")
    for f in findings:
        found = Text(f.detail)
        if f.fix:
            found.append(f"\nfix: {f.fix}", style="dim")
        rows.add_row(Text(str(f.level), style=_STYLE[f.level]), f.check, found)
    return rows


def _print_table(report: _Report, console: Console) -> None:
    console.print(findings_table(report.findings))
    counts = {level: sum(f.level is level for f in report.findings) for level in Level}
    console.print(", ".join(f"{counts[level]} {level}" for level in Level))


@click.command()
@run_dir_option
@click.option(
    "--trusted",
    type=click.Path(path_type=Path),
    help="The target's trusted public key directory (or one .pub file).",
)
@audited_keys_option
@click.option(
    "--store",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The log store file (default: RUN_DIR/log.store).",
)
@click.option(
    "--store-size",
    type=click.IntRange(min=1),
    default=_DEFAULT_STORE_BYTES,
    show_default=True,
    help="The configured store size in bytes (store.size_bytes).",
)
@click.option("--ptp", "ptp_glob", default="/dev/ptp*", show_default=True, help="PHC devices.")
@click.option(
    "--max-clock-offset-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Largest acceptable PHC-system disagreement (beyond TAI-UTC).",
)
@click.option(
    "--gpu",
    type=click.Choice(["auto", "require", "skip"]),
    default="auto",
    show_default=True,
    help="auto: check the GPU stack where an NVIDIA driver is installed.",
)
@json_option
def doctor(  # noqa: PLR0917 - click passes every option as an argument
    run_dir: str | None,
    trusted: Path | None,
    keys: tuple[Path, ...],
    store: Path | None,
    store_size: int,
    ptp_glob: str,
    max_clock_offset_ms: float,
    gpu: GpuMode,
    as_json: bool,
) -> None:
    """Check this target: clocks, GPU, keys, run directory, disk, versions."""
    run_path: Path | None = Path(run_dir) if run_dir else None
    if run_path is None:
        try:
            run_path = find_run_dir().path
        except FileNotFoundError:
            run_path = None
    store_path = store if store is not None else (run_path or Path("run")) / "log.store"
    findings = [
        *check_versions(),
        *check_ptp(glob.glob(ptp_glob), max_offset_ms=max_clock_offset_ms),
        *check_clock(),
        *check_gpu(gpu),
        *check_keys(trusted, keys),
        *check_run_dir(run_path),
        *check_disk(store_path, store_size),
    ]
    report = _Report(findings)
    if as_json:
        payload = {"ok": not report.failed, "findings": findings}
        click.echo(msgspec.json.format(msgspec.json.encode(payload)).decode())
    else:
        _print_table(report, console())
    if report.failed:
        raise click.exceptions.Exit(1)
