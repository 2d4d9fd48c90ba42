"""`vigil fsc`: requirements traced to implementing code and verifying tests."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from textwrap import dedent

import pytest
from click.testing import CliRunner

from vigil.errors import ConfigError
from vigil.tools.fsc import (
    FscExit,
    format_csv,
    format_markdown,
    load_requirements,
    scan_implementations,
    scan_verifications,
    trace,
)
from vigil.tools.fsc_cmd import fsc

REPO_ROOT = Path(__file__).resolve().parents[3]

REQUIREMENTS = """\
requirements:
  - id: SR-ING-001
    title: Validate every request
    text: The ingest validates every request against its schema.
    asil: B
  - id: SR-LOG-001
    title: Seal every entry
    text: Every log entry is sealed.
    asil: B
"""


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text))
    return root


def _complete(root: Path) -> Path:
    return _tree(
        root,
        {
            "docs/req.yaml": REQUIREMENTS,
            "nodes/ingest.py": """\
                def validate(request):
                    # implements: SR-ING-001
                    return request
                """,
            "nodes/logger.py": """\
                # implements: SR-LOG-001, SR-ING-001
                def seal(entry):
                    return entry
                """,
            "tests/test_ingest.py": """\
                import pytest

                @pytest.mark.verifies("SR-ING-001")
                def test_rejects_bad_input():
                    pass
                """,
            "tests/test_logger.py": """\
                import pytest

                pytestmark = [pytest.mark.verifies("SR-LOG-001")]

                def test_seal():
                    pass
                """,
        },
    )


def _run(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        fsc, ["--root", str(root), "--requirements", "docs/req.yaml", *args]
    )
    return result.exit_code, result.output


def test_fully_traced_tree_passes(tmp_path: Path) -> None:
    """Every requirement with code and a test: exit 0 and each row says traced."""
    code, output = _run(_complete(tmp_path))
    assert code == FscExit.OK, output
    assert output.count("| traced |") == 2
    assert "`nodes/ingest.py:2`" in output
    assert "`tests/test_ingest.py:4::test_rejects_bad_input`" in output


def test_requirement_without_a_test_fails(tmp_path: Path) -> None:
    """A requirement implemented but never verified makes fsc exit 1 and says so."""
    root = _complete(tmp_path)
    (root / "tests/test_logger.py").write_text("def test_seal():\n    pass\n")
    code, output = _run(root)
    assert code == FscExit.GAPS
    assert "| SR-LOG-001 | B | Seal every entry |" in output
    assert "MISSING test" in output


def test_requirement_without_code_fails(tmp_path: Path) -> None:
    """A requirement verified but never implemented makes fsc exit 1."""
    root = _complete(tmp_path)
    (root / "nodes/logger.py").write_text("def seal(entry):\n    return entry\n")
    code, output = _run(root)
    assert code == FscExit.GAPS
    assert "MISSING implementation" in output


def test_trace_to_an_unknown_id_fails(tmp_path: Path) -> None:
    """Code naming an id no requirement has is a gap too (a typo or a dropped requirement)."""
    root = _complete(tmp_path)
    _tree(root, {"nodes/extra.py": "x = 1  # implements: SR-ING-999\n"})
    code, output = _run(root)
    assert code == FscExit.GAPS
    assert "unknown requirement SR-ING-999" in output


def test_ids_inside_strings_are_not_traces(tmp_path: Path) -> None:
    """Only real comments and real markers count, never text in a string."""
    _tree(
        tmp_path,
        {
            "a.py": 'TEXT = "# implements: SR-ING-001"\n',
            "tests/test_a.py": "DOC = '@pytest.mark.verifies(\"SR-ING-001\")'\n",
        },
    )
    assert scan_implementations([tmp_path], base=tmp_path, skip=[tmp_path / "tests"]) == {}
    assert scan_verifications([tmp_path / "tests"], base=tmp_path) == {}


def test_class_marker_and_several_ids_are_traced(tmp_path: Path) -> None:
    """A marker on a test class with several ids traces each of them."""
    _tree(
        tmp_path,
        {
            "tests/test_b.py": """\
                from pytest import mark

                @mark.verifies("SR-ING-001", "SR-LOG-001")
                class TestBoth:
                    def test_it(self):
                        pass
                """
        },
    )
    found = scan_verifications([tmp_path / "tests"], base=tmp_path)
    assert set(found) == {"SR-ING-001", "SR-LOG-001"}
    assert found["SR-LOG-001"][0].name == "TestBoth"


def test_tests_are_not_scanned_for_implementations(tmp_path: Path) -> None:
    """An implements comment in a test does not count as the implementation."""
    _tree(tmp_path, {"tests/test_c.py": "# implements: SR-ING-001\n"})
    found = scan_implementations([tmp_path], base=tmp_path, skip=[tmp_path / "tests"])
    assert found == {}


def test_csv_has_a_row_per_requirement(tmp_path: Path) -> None:
    """The CSV matrix has a header and one row per requirement."""
    root = _complete(tmp_path)
    matrix = trace(
        load_requirements(root / "docs/req.yaml"),
        base=root,
        code=[root],
        tests=[root / "tests"],
    )
    rows = list(csv.DictReader(io.StringIO(format_csv(matrix))))
    assert [r["id"] for r in rows] == ["SR-ING-001", "SR-LOG-001"]
    assert rows[0]["implemented_by"] == "nodes/ingest.py:2; nodes/logger.py:1"
    assert "2 of 2 requirements traced" in format_markdown(matrix)


def test_output_option_writes_the_matrix_to_a_file(tmp_path: Path) -> None:
    """--output writes the matrix to the named file in the chosen format."""
    root = _complete(tmp_path)
    code, _ = _run(root, "--format", "csv", "--output", str(tmp_path / "m.csv"))
    assert code == FscExit.OK
    assert (tmp_path / "m.csv").read_text().startswith("id,asil,title")


def test_duplicate_requirement_id_is_a_config_error(tmp_path: Path) -> None:
    """A requirement id defined twice is refused, naming the file."""
    path = tmp_path / "req.yaml"
    path.write_text(REQUIREMENTS + REQUIREMENTS.split("\n", 1)[1])
    with pytest.raises(ConfigError, match="defined twice"):
        load_requirements(path)


def test_bad_asil_names_the_path(tmp_path: Path) -> None:
    """An ASIL outside QM/A-D is a ConfigError at its `$.path`."""
    path = tmp_path / "req.yaml"
    path.write_text(REQUIREMENTS.replace("asil: B", "asil: E", 1))
    with pytest.raises(ConfigError) as err:
        load_requirements(path)
    assert err.value.path == "$.requirements[0].asil"


def test_missing_requirement_file_exits_with_config_code(tmp_path: Path) -> None:
    """No requirement file: exit 2 with the reason."""
    code, output = _run(tmp_path)
    assert code == FscExit.CONFIG
    assert "req.yaml" in output


def test_project_requirements_file_is_valid() -> None:
    """docs/safety-requirements.yaml decodes, and every requirement has an ASIL."""
    requirements = load_requirements(REPO_ROOT / "docs/safety-requirements.yaml")
    assert len(requirements.requirements) >= 20
    assert {r.asil for r in requirements.requirements} <= {"QM", "A", "B", "C", "D"}
