"""Safety traceability (`vigil fsc`): each requirement to the code that implements it and the
tests that verify it.

Requirements live in a YAML file (`id`, `title`, `text`, `asil`; a requirement on a fault's
handling also gives its fault-tolerant time interval, `ftti_ms`, and the `faults` of
`vigil bench faults` that exercise it). Code names the requirement
it implements in a comment, `# implements: SR-ING-001` (several ids separated by commas or
spaces); tests name what they verify with the pytest marker
`@pytest.mark.verifies("SR-ING-001", ...)`, on a test function, a test class or as the
module's `pytestmark`. Comments are found with `tokenize` and markers with `ast`, so text that
only mentions an id inside a string is never taken for a trace. Timing comes from the fault
benchmark's figures (`docs/figures/faults-cpu.json`): for each fault the p99 from the fault
to the reaction in force (FDTI + FRTI), set against the requirement's FTTI. A timing is
measured, never asserted: a miss is shown, and does not fail the matrix. `docs/traceability.md`
says more.
"""

from __future__ import annotations

import ast
import csv
import enum
import io
import os
import re
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from vigil.errors import ConfigError

__all__ = [
    "FscExit",
    "Requirement",
    "RequirementSet",
    "Row",
    "Timing",
    "Trace",
    "TraceMatrix",
    "format_csv",
    "format_markdown",
    "load_figures",
    "load_requirements",
    "scan_implementations",
    "scan_verifications",
    "trace",
]

REQUIREMENT_ID = r"SR-[A-Z0-9]+-[0-9]{3}"
_ID = re.compile(REQUIREMENT_ID)
_IMPLEMENTS = re.compile(r"^#+\s*implements:\s*(?P<ids>.+)$", re.IGNORECASE)
# Never searched for traces: tool caches, build output and environments.
_SKIP_DIRS = frozenset({"__pycache__", "build", "dist", "node_modules", "run"})

Asil = Literal["QM", "A", "B", "C", "D"]


class FscExit(enum.IntEnum):
    """Why `vigil fsc` exited."""

    OK = 0
    GAPS = 1
    CONFIG = 2


class Requirement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One safety requirement."""

    id: Annotated[str, msgspec.Meta(pattern=f"^{REQUIREMENT_ID}$")]
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=120)]
    text: Annotated[str, msgspec.Meta(min_length=1)]
    asil: Asil
    mechanism: str = ""
    # The fault-tolerant time interval: fault to hazard, if nothing reacted (ms).
    ftti_ms: Annotated[int, msgspec.Meta(gt=0)] | None = None
    # The faults of `vigil bench faults` that exercise this requirement's mechanism.
    faults: list[str] = []


class RequirementSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A requirement file: the requirements, each id once."""

    requirements: list[Requirement]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for requirement in self.requirements:
            if requirement.id in seen:
                raise ValueError(f"requirement {requirement.id} is defined twice")
            seen.add(requirement.id)


class Trace(msgspec.Struct, frozen=True, kw_only=True, order=True):
    """Where a requirement is named: a file, a line and the test or comment there."""

    path: str
    line: int
    name: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" + (f"::{self.name}" if self.name else "")


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """One fault's measured time from the fault to the reaction in force (p99, ms)."""

    fault: str
    fdti_frti_ms: float | None
    """None: the figures do not have this fault (or it never reacted)."""


class Row(msgspec.Struct, frozen=True, kw_only=True):
    """One requirement and its traces (and, for a fault's handling, its timing)."""

    requirement: Requirement
    implemented_by: list[Trace]
    verified_by: list[Trace]
    timing: list[Timing] = []

    @property
    def within_ftti(self) -> bool | None:
        """Whether every measured fault reacted within the FTTI (None: nothing to judge)."""
        ftti = self.requirement.ftti_ms
        measured = [t.fdti_frti_ms for t in self.timing if t.fdti_frti_ms is not None]
        if ftti is None or not measured:
            return None
        return all(m <= ftti for m in measured)

    @property
    def complete(self) -> bool:
        """Both implemented and verified."""
        return bool(self.implemented_by and self.verified_by)


class TraceMatrix(msgspec.Struct, frozen=True, kw_only=True):
    """The matrix, and traces that name ids no requirement has."""

    rows: list[Row]
    unknown: dict[str, list[Trace]]

    @property
    def complete(self) -> bool:
        """Every requirement traced both ways and no trace to an unknown id."""
        return all(r.complete for r in self.rows) and not self.unknown


def load_requirements(path: str | os.PathLike[str]) -> RequirementSet:
    """Decode a requirement file; ConfigError names the file and the `$.path`."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(source, "", str(exc)) from exc
    try:
        return msgspec.convert(raw, RequirementSet)
    except msgspec.ValidationError as exc:
        rule, _, at = str(exc).partition(" - at `")
        raise ConfigError(source, at.rstrip("`"), rule) from exc


def load_figures(path: str | os.PathLike[str]) -> dict[str, float | None]:
    """Fault name -> its p99 from fault to reaction (ms), from `vigil bench faults --json`;
    empty when the file is absent (timing is then shown as not measured)."""
    try:
        raw = msgspec.json.decode(Path(path).read_bytes())
    except (OSError, msgspec.DecodeError):
        return {}
    faults = raw.get("faults", []) if isinstance(raw, dict) else []
    return {
        str(f["name"]): f.get("react_ms_p99") for f in faults if isinstance(f, dict) and "name" in f
    }


def _python_files(roots: Iterable[Path], skip: Sequence[Path] = ()) -> Iterator[Path]:
    skipped = {p.resolve() for p in skip}
    for root in roots:
        if root.is_file():
            yield root
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".")
                and d not in _SKIP_DIRS
                and (here / d).resolve() not in skipped
                and not (here / d).is_symlink()
            )
            yield from (here / f for f in sorted(filenames) if f.endswith(".py"))


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def scan_implementations(
    roots: Iterable[Path], *, base: Path, skip: Sequence[Path] = ()
) -> dict[str, list[Trace]]:
    """Requirement id -> the `# implements:` comments that name it, in Python files."""
    found: dict[str, list[Trace]] = {}
    for path in _python_files(roots, skip):
        try:
            with path.open("rb") as f:
                tokens = list(tokenize.tokenize(f.readline))
        except (tokenize.TokenError, SyntaxError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(str(path), "", f"cannot read for traces: {exc}") from exc
        for token in tokens:
            if token.type != tokenize.COMMENT:
                continue
            match = _IMPLEMENTS.match(token.string)
            if match is None:
                continue
            where = Trace(path=_relative(path, base), line=token.start[0])
            for rid in _ID.findall(match.group("ids")):
                found.setdefault(rid, []).append(where)
    return found


def _verifies(node: ast.expr) -> list[str] | None:
    """The ids of a `verifies(...)` marker expression, or None when it is another thing."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name != "verifies":
        return None
    return [
        arg.value
        for arg in node.args
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    ]


def _markers(value: ast.expr) -> Iterator[list[str]]:
    """Marker expressions in a decorator or in `pytestmark = [...]`."""
    items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
    for item in items:
        ids = _verifies(item)
        if ids is not None:
            yield ids


def scan_verifications(roots: Iterable[Path], *, base: Path) -> dict[str, list[Trace]]:
    """Requirement id -> the tests carrying `@pytest.mark.verifies(id)`."""
    found: dict[str, list[Trace]] = {}

    def add(ids: Iterable[str], path: Path, line: int, name: str) -> None:
        for rid in ids:
            found.setdefault(rid, []).append(
                Trace(path=_relative(path, base), line=line, name=name)
            )

    for path in _python_files(roots):
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError) as exc:
            raise ConfigError(str(path), "", f"cannot parse for traces: {exc}") from exc
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in statement.targets
            ):
                for ids in _markers(statement.value):
                    add(ids, path, statement.lineno, "<module>")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for decorator in node.decorator_list:
                    for ids in _markers(decorator):
                        add(ids, path, node.lineno, node.name)
    return found


def trace(
    requirements: RequirementSet,
    *,
    base: Path,
    code: Sequence[Path],
    tests: Sequence[Path],
    figures: dict[str, float | None] | None = None,
) -> TraceMatrix:
    """Build the matrix: every requirement with its implementing code and verifying tests,
    and the measured timing of the faults it names (from `figures`)."""
    implemented = scan_implementations(code, base=base, skip=tests)
    verified = scan_verifications(tests, base=base)
    known = {r.id for r in requirements.requirements}
    unknown: dict[str, list[Trace]] = {}
    for table in (implemented, verified):
        for rid, traces in table.items():
            if rid not in known:
                unknown.setdefault(rid, []).extend(traces)
    rows = [
        Row(
            requirement=r,
            implemented_by=sorted(implemented.get(r.id, [])),
            verified_by=sorted(verified.get(r.id, [])),
            timing=[Timing(fault=f, fdti_frti_ms=(figures or {}).get(f)) for f in r.faults],
        )
        for r in requirements.requirements
    ]
    return TraceMatrix(rows=rows, unknown={k: sorted(v) for k, v in sorted(unknown.items())})


def _status(row: Row) -> str:
    if row.complete:
        return "traced"
    missing = [
        what
        for what, traces in (("implementation", row.implemented_by), ("test", row.verified_by))
        if not traces
    ]
    return "MISSING " + " and ".join(missing)


def _timing(row: Row) -> str:
    """`FTTI 500 ms: worker-kill 23, ...` (p99 ms from fault to reaction), or "-"."""
    ftti = row.requirement.ftti_ms
    if ftti is None:
        return "-"
    measured = ", ".join(
        f"{t.fault} {'not measured' if t.fdti_frti_ms is None else f'{t.fdti_frti_ms:g}'}"
        for t in row.timing
    )
    verdict = {True: "within", False: "MISSED", None: ""}[row.within_ftti]
    return f"FTTI {ftti} ms: {measured or 'no fault named'}" + (f" ({verdict})" if verdict else "")


def format_markdown(matrix: TraceMatrix) -> str:
    """The matrix as a Markdown table, then any traces to unknown ids."""
    lines = [
        "| ID | ASIL | Requirement | Implemented by | Verified by | FDTI+FRTI p99 (ms) | Status |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in matrix.rows:
        r = row.requirement
        impl = "<br>".join(f"`{t}`" for t in row.implemented_by) or "-"
        tests = "<br>".join(f"`{t}`" for t in row.verified_by) or "-"
        lines.append(
            f"| {r.id} | {r.asil} | {r.title} | {impl} | {tests} | {_timing(row)}"
            f" | {_status(row)} |"
        )
    done = sum(r.complete for r in matrix.rows)
    lines += ["", f"{done} of {len(matrix.rows)} requirements traced both ways."]
    for rid, traces in matrix.unknown.items():
        lines.append(f"- unknown requirement {rid} named at " + ", ".join(f"`{t}`" for t in traces))
    return "\n".join(lines) + "\n"


def format_csv(matrix: TraceMatrix) -> str:
    """The matrix as CSV (one row per requirement; traces joined by `; `)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "asil", "title", "implemented_by", "verified_by", "fdti_frti", "status"])
    for row in matrix.rows:
        r = row.requirement
        writer.writerow(
            [
                r.id,
                r.asil,
                r.title,
                "; ".join(str(t) for t in row.implemented_by),
                "; ".join(str(t) for t in row.verified_by),
                _timing(row),
                _status(row),
            ]
        )
    for rid, traces in matrix.unknown.items():
        writer.writerow([rid, "", "", "; ".join(str(t) for t in traces), "", "", "UNKNOWN id"])
    return out.getvalue()
