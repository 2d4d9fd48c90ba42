"""The private run directory: ipc endpoints and the run's graph (nodes, pids, topics)."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

import msgspec

from vigil.bus.closing import Closing
from vigil.errors import VigilError

__all__ = [
    "GraphNode",
    "RunDir",
    "RunDirInUse",
    "RunGraph",
    "RunLock",
    "find_run_dir",
    "resolve_endpoint",
]

# sockaddr_un.sun_path holds 107 bytes plus a NUL.
_MAX_IPC_PATH = 107
CURRENT_LINK = "current"
_LOCK_FILE = "launch.lock"


class RunDirInUse(VigilError):
    """Another launch holds the run directory."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"run directory {path} is in use by another launch ({holder}); stop it first or"
            " give this launch its own --run-dir"
        )
        self.path = path
        self.holder = holder


# implements: SR-RUN-001
class RunLock(Closing):
    """The run directory taken for one launch: an exclusive `flock` held until closed.

    The kernel drops it when the launcher's process ends however it ends, so a launcher that
    was killed never leaves a directory locked. The descriptor is not inherited by the nodes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(fd)
            raise RunDirInUse(path.parent, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        try:  # who holds it, for the next launch's error; a full disk only costs that
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"launcher pid {os.getpid()}\n".encode(), 0)
        except OSError:
            pass

    def close(self) -> None:
        """Release the directory (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class GraphNode(msgspec.Struct, kw_only=True):
    """One running node process as the launcher sees it."""

    name: str
    kind: str
    instance: int
    pid: int
    publishes: list[str] = []
    subscribes: list[str] = []
    endpoints: dict[str, str] = {}
    restarts: int = 0
    host: str = ""


class RunGraph(msgspec.Struct, kw_only=True):
    """What the launcher writes to `graph.json` for the CLI tools."""

    launch_file: str
    launcher_pid: int
    started_ns: int
    endpoints: dict[str, str]
    topics: dict[str, str]
    nodes: list[GraphNode] = []
    server_key: str = ""
    """Path of the bus server's public certificate (`NAME.key`) that tools connecting to a
    tcp bus need for CurveZMQ; empty when the bus is not secured. Last and defaulted, so
    graph files written before it existed still decode."""


# implements: SR-SEC-002
class RunDir:
    """A run directory (mode 0700) and the endpoints inside it."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path).resolve()
        if create:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        elif not self.path.is_dir():
            raise FileNotFoundError(f"no run directory at {self.path}")

    def ipc(self, name: str) -> str:
        """The ipc:// endpoint of a socket named `name` in this directory."""
        sock = self.path / f"{name}.sock"
        if len(str(sock)) > _MAX_IPC_PATH:
            raise ValueError(f"ipc path too long for a unix socket ({len(str(sock))} bytes)")
        return f"ipc://{sock}"

    @property
    def pub(self) -> str:
        """Where publishers connect (the proxy's XSUB)."""
        return self.ipc("pub")

    @property
    def sub(self) -> str:
        """Where subscribers connect (the proxy's XPUB)."""
        return self.ipc("sub")

    @property
    def control(self) -> str:
        """Where nodes report readiness to the launcher."""
        return self.ipc("control")

    @property
    def latched(self) -> Path:
        """Where the proxy keeps the latched topics' last values (they outlive it)."""
        return self.path / "latched"

    def lock(self) -> RunLock:
        """Take this directory for one launch; RunDirInUse when another launch holds it."""
        return RunLock(self.path / _LOCK_FILE)

    @property
    def graph_path(self) -> Path:
        """The run's graph file."""
        return self.path / "graph.json"

    def write_graph(self, graph: RunGraph) -> None:
        """Replace graph.json atomically (readers never see half a file)."""
        tmp = self.graph_path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(graph)))
        os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
        tmp.replace(self.graph_path)

    def read_graph(self) -> RunGraph:
        """The run's graph; FileNotFoundError when no launch has written one."""
        return msgspec.json.decode(self.graph_path.read_bytes(), type=RunGraph)


def resolve_endpoint(run: RunDir, name: str) -> str:
    """A configured endpoint: `tcp://…`/`ipc://…` pass through; a bare name becomes an ipc
    socket in the run directory."""
    return name if "://" in name else run.ipc(name)


def find_run_dir(explicit: str | None = None) -> RunDir:
    """The run directory a CLI tool should use: `--run-dir`, $VIGIL_RUN_DIR or ./run/current."""
    candidate = explicit or os.environ.get("VIGIL_RUN_DIR") or str(Path("run") / CURRENT_LINK)
    return RunDir(candidate, create=False)
