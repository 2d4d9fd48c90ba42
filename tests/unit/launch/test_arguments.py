"""Launch arguments, `$(...)` substitution and `include:`, with errors naming file and `$.path`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.errors import ConfigError
from vigil.launch import LaunchPlan, load, parse_assignments
from vigil.tools.bag._mcap import BagWriter
from vigil.tools.cli import cli

ARGS = """\
name: args
arguments:
  workers: {type: int, default: 2, description: worker processes}
  batch: {type: int}
  device: {type: str, default: cpu, choices: [cpu, cuda]}
  fast: {type: bool, default: false}
nodes:
  - name: sink
    kind: demo_sink
    config:
      report: "sink-$(arg device)-$(arg fast).json"
  - name: worker
    kind: worker
    replicas: $(arg workers)
    config:
      max_batch: $(arg batch)
      engine: {device: $(arg device)}
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _load(path: Path, **given: str) -> LaunchPlan:
    return load(path, path.parent / "run", arguments=given)


def _error(path: Path, **given: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(path, **given)
    return info.value


# -- values and substitution --------------------------------------------------------------


def test_command_line_values_are_typed_and_substituted(tmp_path: Path) -> None:
    """`workers:=3` makes three replicas (an int where an int is due); defaults fill the rest."""
    plan = _load(_write(tmp_path, "a.yaml", ARGS), workers="3", batch="8")
    assert [p.label for p in plan.processes] == ["sink", "worker.1", "worker.2", "worker.3"]
    assert plan.processes[1].config.max_batch == 8
    assert plan.arguments == {"workers": 3, "batch": 8, "device": "cpu", "fast": False}


def test_substitution_inside_a_string_is_spelt_as_text(tmp_path: Path) -> None:
    """`$(arg x)` inside a longer string is replaced by the value's text (bool as true/false)."""
    plan = _load(_write(tmp_path, "a.yaml", ARGS), batch="4", fast="yes", device="cuda")
    assert plan.processes[0].config.report == "sink-cuda-true.json"


def test_describe_shows_the_resolved_arguments(tmp_path: Path) -> None:
    """The printed plan lists every argument's value in `name:=value` form."""
    text = _load(_write(tmp_path, "a.yaml", ARGS), batch="4").describe()
    assert text.splitlines()[1] == "  arguments: workers:=2 batch:=4 device:=cpu fast:=false"


def test_env_substitution_with_and_without_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`$(env NAME)` reads the launcher's environment; `$(env NAME DEFAULT)` falls back."""
    text = """\
    name: env
    nodes:
      - name: sink
        kind: demo_sink
        config: {report: "$(env VIGIL_TEST_REPORT)"}
      - name: other
        kind: demo_sink
        config: {report: "$(env VIGIL_TEST_UNSET fallback.json)"}
    """
    path = _write(tmp_path, "env.yaml", text)
    monkeypatch.setenv("VIGIL_TEST_REPORT", "from-env.json")
    monkeypatch.delenv("VIGIL_TEST_UNSET", raising=False)
    sink, other = _load(path).processes
    assert (sink.config.report, other.config.report) == ("from-env.json", "fallback.json")
    monkeypatch.delenv("VIGIL_TEST_REPORT")
    error = _error(path)
    assert error.path == "$.nodes[0].config.report"
    assert "not set" in error.reason


def test_parse_assignments_splits_name_value_tokens() -> None:
    """Tokens with `:=` are assignments (the value may itself hold `:=`); others stay."""
    rest, values = parse_assignments(["a.mcap", "x:=1", "url:=tcp://h:=1", ":=odd"])
    assert rest == ["a.mcap", ":=odd"]
    assert values == {"x": "1", "url": "tcp://h:=1"}


# -- argument errors ----------------------------------------------------------------------


def test_unknown_argument_names_its_path(tmp_path: Path) -> None:
    """An argument the file does not declare is refused at `$.arguments.NAME`."""
    error = _error(_write(tmp_path, "a.yaml", ARGS), batch="4", colour="red")
    assert error.path == "$.arguments.colour"
    assert "unknown argument 'colour'" in error.reason
    assert "batch, device, fast, workers" in error.reason


@pytest.mark.parametrize(
    ("given", "path"),
    [
        ({"batch": "4", "workers": "two"}, "$.arguments.workers"),
        ({"batch": "4.5"}, "$.arguments.batch"),
        ({"batch": "4", "fast": "maybe"}, "$.arguments.fast"),
        ({"batch": "4", "device": "tpu"}, "$.arguments.device"),
    ],
    ids=["not-int", "float-for-int", "not-bool", "not-a-choice"],
)
def test_ill_typed_argument_names_its_path(
    tmp_path: Path, given: dict[str, str], path: str
) -> None:
    """A value that does not parse as its declared type, or is not a declared choice, is
    refused at its argument's path."""
    error = _error(_write(tmp_path, "a.yaml", ARGS), **given)
    assert error.path == path
    assert error.source == str(tmp_path / "a.yaml")


def test_missing_required_argument(tmp_path: Path) -> None:
    """An argument without a default must be given."""
    error = _error(_write(tmp_path, "a.yaml", ARGS))
    assert error.path == "$.arguments.batch"
    assert "batch:=VALUE" in error.reason


def test_substituted_value_is_checked_by_the_launch_model(tmp_path: Path) -> None:
    """A well-typed argument that breaks a node field's range is refused at that field."""
    error = _error(_write(tmp_path, "a.yaml", ARGS), batch="4", workers="0")
    assert error.path == "$.nodes[1].replicas"


def test_undeclared_substitution_names_where_it_is_used(tmp_path: Path) -> None:
    """`$(arg nope)` in a node is refused at the field that uses it."""
    error = _error(
        _write(tmp_path, "a.yaml", ARGS.replace("$(arg device)}", "$(arg nope)}")), batch="4"
    )
    assert error.path == "$.nodes[1].config.engine.device"
    assert "no such argument" in error.reason


def test_unknown_substitution_kind(tmp_path: Path) -> None:
    """A `$(...)` other than arg and env is refused, naming the supported ones."""
    error = _error(
        _write(tmp_path, "a.yaml", ARGS.replace("$(arg workers)", "$(find pkg)")), batch="4"
    )
    assert error.path == "$.nodes[1].replicas"
    assert "$(arg NAME)" in error.reason


def test_bad_declaration_names_its_path(tmp_path: Path) -> None:
    """A declaration with an unknown type is refused under `$.arguments`."""
    error = _error(_write(tmp_path, "a.yaml", ARGS.replace("{type: int}", "{type: integer}")))
    assert error.path == "$.arguments.batch.type"


# -- include ------------------------------------------------------------------------------

CAMERA = """\
name: camera
arguments:
  rate: {type: float, default: 5}
nodes:
  - name: source
    kind: demo_source
    config: {rate_hz: $(arg rate), report: source.json}
"""


def test_include_places_its_nodes_with_arguments(tmp_path: Path) -> None:
    """An include entry is replaced by the included file's nodes, given the entry's
    arguments (themselves substituted in the including file)."""
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub", "camera.yaml", CAMERA)
    top = """\
    name: top
    arguments:
      rate: {type: float, default: 12.5}
    nodes:
      - name: sink
        kind: demo_sink
      - include: sub/camera.yaml
        arguments: {rate: $(arg rate)}
      - name: last
        kind: demo_sink
    """
    plan = _load(_write(tmp_path, "top.yaml", top), rate="20")
    assert [p.label for p in plan.processes] == ["sink", "source", "last"]
    source = plan.processes[1]
    assert source.config.rate_hz == 20.0
    # Relative paths of an included node resolve against its own file's folder.
    assert source.args.launch_dir == str((tmp_path / "sub").resolve())
    assert plan.processes[0].args.launch_dir == str(tmp_path.resolve())


def test_include_with_unknown_argument_names_the_including_entry(tmp_path: Path) -> None:
    """An include that passes an argument the included file lacks is refused at the entry."""
    _write(tmp_path, "camera.yaml", CAMERA)
    top = """\
    name: top
    nodes:
      - name: sink
        kind: demo_sink
      - include: camera.yaml
        arguments: {fps: 3}
    """
    path = _write(tmp_path, "top.yaml", top)
    error = _error(path)
    assert (error.source, error.path) == (str(path), "$.nodes[1].arguments.fps")


def test_include_with_ill_typed_argument(tmp_path: Path) -> None:
    """A value of the wrong type passed by an include is refused at the entry's argument."""
    _write(tmp_path, "camera.yaml", CAMERA)
    top = "name: top\nnodes:\n  - include: camera.yaml\n    arguments: {rate: fast}\n"
    path = _write(tmp_path, "top.yaml", top)
    error = _error(path)
    assert (error.source, error.path) == (str(path), "$.nodes[0].arguments.rate")


def test_error_in_an_included_node_names_the_included_file(tmp_path: Path) -> None:
    """A bad field in an included node is reported in that file at its own `$.path`."""
    camera = _write(tmp_path, "camera.yaml", CAMERA.replace("$(arg rate)", "-1"))
    top = "name: top\nnodes:\n  - name: sink\n    kind: demo_sink\n  - include: camera.yaml\n"
    error = _error(_write(tmp_path, "top.yaml", top))
    assert (error.source, error.path) == (str(camera), "$.nodes[0].config.rate_hz")


def test_include_cycle_is_refused(tmp_path: Path) -> None:
    """A file that includes itself (through another) is refused at the closing include."""
    _write(tmp_path, "a.yaml", "name: a\nnodes:\n  - include: b.yaml\n")
    b = _write(tmp_path, "b.yaml", "name: b\nnodes:\n  - include: a.yaml\n")
    error = _error(tmp_path / "a.yaml")
    assert (error.source, error.path) == (str(b), "$.nodes[0].include")
    assert "a.yaml -> b.yaml -> a.yaml" in error.reason


def test_included_file_may_not_set_the_bus(tmp_path: Path) -> None:
    """Hosts, bus and security belong to the top file: an included file setting them is
    refused rather than silently ignored."""
    inner = _write(tmp_path, "inner.yaml", CAMERA + "hosts: {a: 10.0.0.1}\n")
    error = _error(_write(tmp_path, "top.yaml", "name: t\nnodes:\n  - include: inner.yaml\n"))
    assert (error.source, error.path) == (str(inner), "$.hosts")


# -- the command line ---------------------------------------------------------------------


def test_launch_print_with_arguments(tmp_path: Path) -> None:
    """`vigil launch FILE name:=value --print` prints the plan resolved with those values."""
    path = _write(tmp_path, "a.yaml", ARGS)
    result = CliRunner().invoke(cli, ["launch", str(path), "workers:=3", "batch:=16", "--print"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"launch args from {path}"
    assert lines[1] == "  arguments: workers:=3 batch:=16 device:=cpu fast:=false"
    assert [line.split()[0] for line in lines[2:]] == ["sink", "worker.1", "worker.2", "worker.3"]
    assert '"max_batch":16' in lines[2 + 1]


def test_launch_refuses_a_bad_argument_with_exit_2(tmp_path: Path) -> None:
    """An ill-typed argument on the command line exits 2 naming its `$.path`."""
    path = _write(tmp_path, "a.yaml", ARGS)
    result = CliRunner().invoke(cli, ["launch", str(path), "batch:=many", "--print"])
    assert result.exit_code == 2
    assert "`$.arguments.batch`" in result.output


def test_launch_show_args(tmp_path: Path) -> None:
    """`--show-args` lists each declared argument with its type, default and description,
    without needing values for the required ones."""
    result = CliRunner().invoke(
        cli, ["launch", str(_write(tmp_path, "a.yaml", ARGS)), "--show-args"]
    )
    assert result.exit_code == 0, result.output
    assert "  workers          int    default 2" in result.output
    assert "      worker processes" in result.output
    assert "  batch            int    required" in result.output
    assert "      one of: cpu, cuda" in result.output


def test_graph_check_takes_arguments(tmp_path: Path) -> None:
    """`vigil graph check FILE name:=value` checks the graph resolved with those values."""
    path = _write(tmp_path, "a.yaml", ARGS)
    missing = CliRunner().invoke(cli, ["graph", "check", str(path)])
    assert missing.exit_code == 2
    assert "`$.arguments.batch`" in missing.output
    given = CliRunner().invoke(cli, ["graph", "check", str(path), "batch:=4", "--json"])
    assert '"source"' in given.output, given.output


def test_bag_check_passes_arguments_to_its_launch(tmp_path: Path) -> None:
    """`vigil bag check BAG --launch FILE name:=value` resolves the launch file with the values
    (an unknown one is refused at its `$.path` before anything starts)."""
    bag = tmp_path / "empty.mcap"
    with BagWriter(bag):
        pass
    path = _write(tmp_path, "a.yaml", ARGS)
    result = CliRunner().invoke(
        cli, ["bag", "check", str(bag), "--launch", str(path), "batch:=4", "colour:=red"]
    )
    assert result.exit_code == 1
    assert "`$.arguments.colour`" in result.output
    missing = CliRunner().invoke(cli, ["bag", "check", "absent.mcap", "--launch", str(path)])
    assert missing.exit_code == 2
    assert "no bag file 'absent.mcap'" in missing.output
