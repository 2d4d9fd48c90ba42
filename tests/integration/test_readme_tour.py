"""The README's tour runs as written.

Every fenced `sh` block of the section "A short tour of the CLI" is read from README.md. The
first block starts the demo pipeline (one `vigil launch` command); it runs in the background
until its launcher says it is ready. Every line of the other blocks then runs, in order, in
the same folder, through bash, and must exit 0 (or with a status `KEY_LINES` allows) and show
the key line `KEY_LINES` names for it. A line the table does not know must still exit 0, so a
command added to the tour is tested as soon as it is written. `NAME=$(...)` lines set a
variable for the lines after them. Finally the pipeline is stopped with Ctrl-C (SIGINT), as
the README says, and must stop cleanly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
SECTION: Final = "## A short tour of the CLI"
ASSIGNMENT: Final = re.compile(r"^(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.+)$")


@dataclass(frozen=True, slots=True)
class Expect:
    """What a tour line must do: exit with one of `codes` and print a match of `shows`."""

    shows: str = ""
    codes: frozenset[int] = frozenset({0})
    timeout_s: float = 180.0


KEY_LINES: Final = {
    "vigil launch launch/demo.yaml --show-args": Expect(r"(?m)^  workers +int +default 2"),
    "vigil launch launch/demo.yaml workers:=3 --print": Expect(r"(?m)^  worker\.3 +worker"),
    "vigil graph check": Expect(r"graph check launch/target\.yaml: 0 errors"),
    "vigil node list": Expect(r"(?m)^worker\.1 +worker +\d+ +alive"),
    "vigil top --once": Expect(r"(?m)^infer/result +[\d.]+ Hz"),
    "vigil topic list": Expect(r"(?m)^infer/result +infer\.result +ingest"),
    "vigil topic echo infer/result": Expect(r'"x_min": [\d.]+'),
    "vigil topic hz": Expect(r"health/heartbeat: [\d.]+ Hz over"),
    "vigil topic pub": Expect(r"published #1 on diag/event \[diag\.event\]"),
    "vigil bag record": Expect(r"recorded \d+ messages, [\d.]+ MB, 0 dropped"),
    "vigil bag info": Expect(r"(?m)^  infer/request +\d+ msgs"),
    "vigil bag play": Expect(r"\d+ messages in [\d.]+ s"),
    "vigil bag convert": Expect(r"wrote \d+ messages .* to run/demo\.json\.mcap \(json\)"),
    # 64: entries stamped by a fallback clock, on a machine without a PTP hardware clock.
    "vigil log verify": Expect(r"\d+ entries \(seq 1\.\.\d+\)", codes=frozenset({0, 64})),
    "vigil log show run/current/log.store --event": Expect(r"health\.state .*\"NORMAL\""),
    "vigil log show run/current/log.store --request": Expect(r"(?m)^ +\d+ \S+ [0-9a-f]{32} "),
    "TRACE_ID=": Expect(r"^[0-9a-f]{32}$"),
    "vigil log trace": Expect(r"trace [0-9a-f]{32}: [1-9]\d* entries"),
    "vigil log audit": Expect(r"(?m)^ +seq +time \(UTC\) +class"),
    "vigil log keygen": Expect(r"key id: +[0-9a-f]+"),
    "vigil model keygen": Expect(r"key id +[0-9a-f]{64}"),
    "vigil model add": Expect(r"signed +run/models/det/2/model\.sig"),
    "vigil model verify": Expect(r"verified det/2"),
    "vigil model list": Expect(r"2 +signed"),
    "vigil model status": Expect(r"committed: ppocr-det 4\.0"),
    "vigil keys gen": Expect(r"worker\.key"),
    "vigil fsc": Expect(r"\d+ of \d+ requirements traced both ways"),
    "vigil doctor": Expect(r"\d+ ok, \d+ warning, 0 error"),
    "vigil schema export": Expect(r"\.json"),
}
"""Key lines by the start of the tour line they belong to (the longest start wins)."""


def tour_blocks(readme: str) -> list[list[str]]:
    """The commands of each fenced `sh` block of the tour section, continuation lines joined."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    commands: list[list[str]] = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        commands.append([line.strip() for line in joined.splitlines() if line.strip()])
    return commands


def expectation(line: str) -> Expect:
    """The key line of a tour line; a line no entry names must exit 0."""
    starts = [key for key in KEY_LINES if line.startswith(key)]
    return KEY_LINES[max(starts, key=len)] if starts else Expect()


class Pipeline:
    """The tour's first block, started in the background and followed until it is ready."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.ready = threading.Event()
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            shell=True,
            executable="/bin/bash",
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith("{"):
                try:
                    event = json.loads(line).get("event")
                except json.JSONDecodeError:
                    continue
                if event == "launch.ready":
                    self.ready.set()
        self.ready.set()  # ended: whoever waits learns it from the exit status

    def stop(self, timeout_s: float = 120.0) -> int:
        """Ctrl-C, as the README says; the launcher's exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        finally:
            self._reader.join(10)
            if self.process.stdout is not None:
                self.process.stdout.close()

    def output(self) -> str:
        """What the launcher printed so far."""
        return "".join(self.lines)


@pytest.fixture
def tour_dir() -> Iterator[Path]:
    """A fresh folder holding the repository's launch files, as a reader's checkout would."""
    with tempfile.TemporaryDirectory(prefix="vg-tour-", dir="/tmp") as tmp:
        (Path(tmp) / "launch").symlink_to(ROOT / "launch")
        yield Path(tmp)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    # `vigil` as the reader has it: the project's venv on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(COLUMNS="80", NO_COLOR="1", PYTHONUNBUFFERED="1")
    return env


def _run(line: str, cwd: Path, env: dict[str, str], expect: Expect) -> tuple[int, str, str]:
    """A tour line's exit status, stdout and stderr."""
    done = subprocess.run(
        line,
        shell=True,
        executable="/bin/bash",
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=expect.timeout_s,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_tour_blocks_are_a_pipeline_and_the_commands_beside_it() -> None:
    """The tour starts the pipeline in a block of its own, then taps it in others, and every
    key line belongs to a line of the tour."""
    blocks = tour_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 2
    assert len(blocks[0]) == 1 and blocks[0][0].startswith("vigil launch ")
    lines = [line for block in blocks[1:] for line in block]
    unused = [key for key in KEY_LINES if not any(line.startswith(key) for line in lines)]
    assert unused == [], "key lines for commands the tour no longer has"


@pytest.mark.timeout(900)
def test_readme_tour_runs_as_written(tour_dir: Path) -> None:
    """Each command of the tour, run verbatim in order against the running demo pipeline,
    exits as expected and prints its key line; Ctrl-C then stops the pipeline cleanly."""
    blocks = tour_blocks((ROOT / "README.md").read_text())
    env = _env()
    pipeline = Pipeline(blocks[0][0], tour_dir, env)
    try:
        assert pipeline.ready.wait(300), "the pipeline was not ready within 300 s"
        assert pipeline.process.poll() is None, f"the pipeline ended:\n{pipeline.output()}"
        for line in (line for block in blocks[1:] for line in block):
            expect = expectation(line)
            assigned = ASSIGNMENT.match(line)
            if assigned:
                name = assigned.group("name")
                code, value, err = _run(f'{line}\nprintf "%s" "${name}"', tour_dir, env, expect)
                assert code in expect.codes, f"{line}\nexit {code}\n{err}"
                assert re.search(expect.shows, value), f"{line}\nset {name}={value!r}\n{err}"
                env[name] = value
                continue
            code, stdout, stderr = _run(line, tour_dir, env, expect)
            out = stdout + stderr
            assert code in expect.codes, f"{line}\nexit {code}\n{out}"
            assert re.search(expect.shows, out), f"{line}\nno match for {expect.shows!r}:\n{out}"
    finally:
        code = pipeline.stop()
    assert code == 0, pipeline.output()
