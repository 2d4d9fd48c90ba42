"""`vigil doctor`: each check's verdict and fix, and the exit status that gates a deployment."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from vigil.bus.ptp import CLOCK_REALTIME, fd_to_clockid
from vigil.bus.rundir import RunDir, RunGraph
from vigil.launch import Finding, Level
from vigil.models.keys import generate_key_pair
from vigil.tools.cli import cli
from vigil.tools.doctor_cmd import (
    TAI_UTC_S,
    check_clock,
    check_disk,
    check_gpu,
    check_keys,
    check_ptp,
    check_run_dir,
    check_versions,
)


def statuses(findings: list[Finding]) -> list[Level]:
    return [f.level for f in findings]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory as the launcher leaves it: mode 0700 with a graph naming a live pid."""
    run = RunDir(tmp_path / "run")
    run.write_graph(
        RunGraph(
            launch_file="x.yaml", launcher_pid=os.getpid(), started_ns=1, endpoints={}, topics={}
        )
    )
    return run.path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A signing pair: (private key file, trusted directory holding only the public half)."""
    pair = generate_key_pair(tmp_path / "signing")
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o755)
    os.chmod(trusted, 0o755)
    (trusted / pair.public.name).write_bytes(pair.public.read_bytes())
    return pair.private, trusted


def test_versions_of_this_interpreter_pass() -> None:
    """The versions vigil runs with here are the versions it needs."""
    findings = check_versions()
    assert {f.check for f in findings} >= {"python", "pyzmq", "msgspec", "log sealer"}
    assert Level.ERROR not in statuses(findings)


def test_an_unbuilt_sealing_loop_warns_with_the_fix() -> None:
    """The compiled sealing loop is OK; the Python fallback warns and names the build needs."""
    (built,) = [f for f in check_versions("compiled") if f.check == "log sealer"]
    (fallback,) = [f for f in check_versions("python") if f.check == "log sealer"]
    assert built.level is Level.OK
    assert fallback.level is Level.WARNING and "libssl-dev" in fallback.fix


def test_a_private_run_dir_with_a_live_graph_is_ok(run_dir: Path) -> None:
    """Mode 0700 and a graph.json whose launcher runs."""
    assert statuses(check_run_dir(run_dir)) == [Level.OK, Level.OK]


def test_a_run_dir_others_can_enter_fails_with_chmod(run_dir: Path) -> None:
    """Mode 0755 exposes the ipc sockets: FAIL, fixed by chmod 700."""
    os.chmod(run_dir, 0o755)
    finding = check_run_dir(run_dir)[0]
    assert finding.level is Level.ERROR
    assert "0755" in finding.detail and finding.fix == f"chmod 700 {run_dir}"


def test_missing_or_stale_graph_warns(run_dir: Path) -> None:
    """No graph: no launch; a graph whose launcher is gone: stale."""
    graph = run_dir / "graph.json"
    stale = msgspec.json.decode(graph.read_bytes(), type=RunGraph)
    stale.launcher_pid = 2**22 + 12345  # above the kernel's default pid_max
    graph.write_bytes(msgspec.json.encode(stale))
    assert "stale" in check_run_dir(run_dir)[1].detail
    graph.unlink()
    assert statuses(check_run_dir(run_dir)) == [Level.OK, Level.WARNING]
    assert statuses(check_run_dir(run_dir / "absent")) == [Level.WARNING]


def test_a_garbled_graph_fails(run_dir: Path) -> None:
    """A graph.json that does not decode is an error, not a missing launch."""
    (run_dir / "graph.json").write_text("{not json")
    assert check_run_dir(run_dir)[1].level is Level.ERROR


def test_keys_with_the_right_modes_pass(keys: tuple[Path, Path]) -> None:
    """A 0600 private key and a trusted directory only its owner may change."""
    private, trusted = keys
    findings = check_keys(trusted, [private])
    assert statuses(findings) == [Level.OK, Level.OK]
    assert "1 key(s)" in findings[0].detail and "0600" in findings[1].detail


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_readable_private_key_fails_with_chmod_600(keys: tuple[Path, Path], mode: int) -> None:
    """Group or others may read it: FAIL, fixed by chmod 600."""
    private, _ = keys
    os.chmod(private, mode)
    (finding,) = check_keys(None, [private.parent])
    assert finding.level is Level.ERROR
    assert f"{mode:04o}" in finding.detail and finding.fix == f"chmod 600 {private}"


def test_a_group_writable_trusted_dir_fails(keys: tuple[Path, Path]) -> None:
    """Someone else could add a key the loader trusts."""
    _, trusted = keys
    os.chmod(trusted, 0o775)
    assert statuses(check_keys(trusted)) == [Level.OK, Level.ERROR]


def test_a_private_key_in_the_trusted_dir_warns(keys: tuple[Path, Path]) -> None:
    """Signing keys belong off the target."""
    private, trusted = keys
    (trusted / private.name).write_bytes(private.read_bytes())
    findings = check_keys(trusted)
    assert statuses(findings) == [Level.OK, Level.WARNING]
    assert private.name in findings[1].detail


def test_an_empty_trusted_dir_fails(tmp_path: Path) -> None:
    """A target that trusts nobody can never load a model."""
    assert statuses(check_keys(tmp_path)) == [Level.ERROR]


def test_a_key_that_is_not_a_key_fails(tmp_path: Path) -> None:
    """A 0600 file that does not parse as a P-384 key."""
    bogus = tmp_path / "bogus.key"
    bogus.write_text("not a key")
    os.chmod(bogus, 0o600)
    (finding,) = check_keys(None, [bogus])
    assert finding.level is Level.ERROR and "PEM" in finding.detail


def test_disk_space_against_the_store_size(tmp_path: Path) -> None:
    """A store that fits is OK; one larger than any disk fails, naming the shortfall."""
    store = tmp_path / "run" / "log.store"
    assert statuses(check_disk(store, 1024 * 1024)) == [Level.OK]
    (finding,) = check_disk(store, 2**62)
    assert finding.level is Level.ERROR and "short" in finding.detail


def test_an_existing_store_needs_no_new_space(tmp_path: Path) -> None:
    """The space already taken by the store file counts towards its size."""
    store = tmp_path / "log.store"
    with store.open("wb") as f:
        f.truncate(2**40)  # sparse: a terabyte that takes no blocks
    assert statuses(check_disk(store, 2**40)) == [Level.OK]


class FakePhc:
    """A PHC that cannot exist here, behind the ClockLib calls (offset in ns from system)."""

    def __init__(self, offset_ns: int, *, readable: bool = True) -> None:
        self.offset_ns = offset_ns
        self.readable = readable
        self.fd = 7
        self.sys_ns = 1_700_000_000_000_000_000

    def open(self, path: str) -> int:
        if not self.readable:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return self.fd

    def close(self, fd: int) -> None:
        assert fd == self.fd

    def clock_gettime_ns(self, clock_id: int) -> int:
        self.sys_ns += 50
        if clock_id == fd_to_clockid(self.fd):
            return self.sys_ns + self.offset_ns
        assert clock_id == CLOCK_REALTIME
        return self.sys_ns

    def reader(self, clock_id: int) -> Callable[[], int]:
        return lambda: self.clock_gettime_ns(clock_id)

    def sys_offset(self, fd: int, samples: int) -> list[tuple[int, int, int]]:
        t = self.sys_ns
        return [(t, t + 40 + self.offset_ns, t + 80) for _ in range(samples)]


def test_no_phc_warns_about_the_fallback_clock() -> None:
    """Without /dev/ptp* the logger stamps from CLOCK_TAI: a WARN, not a FAIL."""
    (finding,) = check_ptp([])
    assert finding.level is Level.WARNING and "fallback" in finding.detail


@pytest.mark.parametrize(
    ("offset_ns", "status", "words"),
    [
        (TAI_UTC_S * 10**9 + 20_000, Level.OK, "keeps TAI"),
        (-30_000, Level.WARNING, "keeps UTC"),
        (TAI_UTC_S * 10**9 + 5 * 10**6, Level.ERROR, "neither TAI nor UTC"),
    ],
)
def test_phc_offset_against_tai(offset_ns: int, status: Level, words: str) -> None:
    """PHC - system is TAI - UTC within the tolerance, else the PHC is not disciplined."""
    (finding,) = check_ptp(["/dev/ptp0"], max_offset_ms=1.0, lib=FakePhc(offset_ns))
    assert finding.level is status and words in finding.detail
    assert "ioctl" in finding.detail


def test_an_unreadable_phc_fails() -> None:
    """A PHC the node cannot open is a FAIL naming the device."""
    (finding,) = check_ptp(["/dev/ptp1"], lib=FakePhc(0, readable=False))
    assert finding.level is Level.ERROR and "/dev/ptp1" in finding.fix


def test_clock_tai_offset_and_clocksource(tmp_path: Path) -> None:
    """TAI = UTC + 37 s and a TSC are OK; offset 0 and jiffies warn."""
    source = tmp_path / "current_clocksource"
    source.write_text("tsc\n")
    assert statuses(check_clock(tai_offset=lambda: TAI_UTC_S, clocksource=source)) == [
        Level.OK,
        Level.OK,
    ]
    source.write_text("jiffies\n")
    assert statuses(check_clock(tai_offset=lambda: 0, clocksource=source)) == [
        Level.WARNING,
        Level.WARNING,
    ]


def _no_cupy() -> str:
    raise ImportError("No module named 'cupy'")


def test_a_cpu_target_needs_no_gpu_stack() -> None:
    """No NVIDIA driver, CPU provider only, no CuPy: all OK in auto mode."""
    findings = check_gpu(
        "auto",
        providers=lambda: ["CPUExecutionProvider"],
        which=lambda _: None,
        cupy_version=_no_cupy,
    )
    assert statuses(findings) == [Level.OK, Level.OK, Level.OK]


def test_a_driver_without_cuda_provider_warns_and_require_fails() -> None:
    """A GPU the workers would not use is worth a WARN; with --gpu require, a FAIL."""
    probes = {
        "providers": lambda: ["CPUExecutionProvider"],
        "which": lambda _: "/usr/bin/nvidia-smi",
        "smi_query": lambda _: "NVIDIA H100, 580.1, 81559 MiB",
        "cupy_version": _no_cupy,
    }
    assert statuses(check_gpu("auto", **probes)) == [Level.OK, Level.WARNING, Level.WARNING]  # type: ignore[arg-type]
    assert statuses(check_gpu("require", **probes)) == [Level.OK, Level.ERROR, Level.ERROR]  # type: ignore[arg-type]
    assert check_gpu("skip") == []


def test_a_full_gpu_stack_passes() -> None:
    """CUDA provider, driver and CuPy present."""
    findings = check_gpu(
        "require",
        providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        which=lambda _: "/usr/bin/nvidia-smi",
        smi_query=lambda _: "NVIDIA H100",
        cupy_version=lambda: "13.6.0",
    )
    assert statuses(findings) == [Level.OK, Level.OK, Level.OK]


def test_cli_json_exits_1_on_a_fail_and_names_the_fix(
    run_dir: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A world-readable private key makes the whole run fail, in JSON too."""
    private, trusted = keys
    os.chmod(private, 0o644)
    args = [
        "doctor",
        "--run-dir", str(run_dir),
        "--trusted", str(trusted),
        "--key", str(private),
        "--store-size", "1048576",
        "--ptp", str(tmp_path / "no-ptp*"),
        "--gpu", "skip",
        "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    failed = [f for f in report["findings"] if f["level"] == "error"]
    assert [f["fix"] for f in failed] == [f"chmod 600 {private}"]
    checks = {f["check"] for f in report["findings"]}
    assert {"python", "ptp", "clock tai", f"run dir {run_dir}", "graph.json"} <= checks


def test_cli_table_exits_0_without_fails(run_dir: Path, keys: tuple[Path, Path]) -> None:
    """Warnings alone (no PHC here) still pass; the table names every check."""
    private, trusted = keys
    args = [
        "doctor",
        "--run-dir", str(run_dir),
        "--trusted", str(trusted),
        "--key", str(private),
        "--store-size", "1048576",
        "--ptp", str(run_dir / "no-ptp*"),
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "vigil doctor" in result.output and "onnxruntime" in result.output
    assert " 0 error" in result.output
