"""Launch files: typed decode, errors that name the file and `$.path`, replica expansion."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vigil.errors import ConfigError, VigilError
from vigil.launch import LaunchPlan, load
from vigil.nodes.worker import WorkerConfig

DEMO = Path(__file__).resolve().parents[3] / "launch" / "demo.yaml"

GOOD = """\
name: small
heartbeat_ms: 150
nodes:
  - name: sink
    kind: demo_sink
  - name: worker
    kind: worker
    replicas: 2
    heartbeat_ms: 500
    config:
      max_batch: 8
      engine:
        task: classification
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "launch.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, tmp_path / "run")
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value


def _plan(tmp_path: Path, text: str = GOOD) -> LaunchPlan:
    return load(_write(tmp_path, text), tmp_path / "run")


# -- what a good file resolves to ---------------------------------------------------------


def test_replicas_expand_into_numbered_labels(tmp_path: Path) -> None:
    """A node with replicas: 2 becomes processes `worker.1` and `worker.2`."""
    labels = [p.label for p in _plan(tmp_path).processes]
    assert labels == ["sink", "worker.1", "worker.2"]


def test_single_node_has_instance_zero(tmp_path: Path) -> None:
    """A node without replicas runs as instance 0 under its bare name."""
    sink = _plan(tmp_path).processes[0]
    assert (sink.args.name, sink.args.instance, sink.label) == ("sink", 0, "sink")


def test_node_config_is_typed(tmp_path: Path) -> None:
    """A node's config decodes into its kind's Config type, with defaults filled in."""
    worker = _plan(tmp_path).processes[1]
    assert isinstance(worker.config, WorkerConfig)
    assert worker.config.max_batch == 8
    assert worker.config.engine.task == "classification"
    assert worker.config.max_queue_delay_us == WorkerConfig().max_queue_delay_us


def test_heartbeat_defaults_to_the_launch_file(tmp_path: Path) -> None:
    """A node's heartbeat_ms overrides the launch file's, which is the default."""
    sink, worker, _ = _plan(tmp_path).processes
    assert (sink.args.heartbeat_ms, worker.args.heartbeat_ms) == (150, 500)


def test_args_carry_run_and_launch_directories(tmp_path: Path) -> None:
    """Each process knows the run directory and the launch file's directory."""
    for process in _plan(tmp_path).processes:
        assert process.args.run_dir == str(tmp_path / "run")
        assert process.args.launch_dir == str(tmp_path.resolve())


def test_describe_lists_every_process(tmp_path: Path) -> None:
    """The printed plan names the launch and one line per process."""
    text = _plan(tmp_path).describe()
    lines = text.splitlines()
    assert lines[0].startswith("launch small from ")
    assert [line.split()[0] for line in lines[1:]] == ["sink", "worker.1", "worker.2"]
    assert '"max_batch":8' in text


def test_demo_launch_file_loads(tmp_path: Path) -> None:
    """The shipped demo launch file loads and resolves every node."""
    plan = load(DEMO, tmp_path)
    labels = [p.label for p in plan.processes]
    assert labels[0] == "logger"  # first up, so it seals everything the others publish
    assert {"worker.1", "worker.2", "ingest", "watchdog", "sink", "source"} <= set(labels)


# -- errors -------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    """An unknown key in the launch file is refused at `$`."""
    error = _error(tmp_path, GOOD + "colour: blue\n")
    assert error.path == "$"
    assert "colour" in error.reason


def test_unknown_node_key(tmp_path: Path) -> None:
    """An unknown key in a node spec is refused at `$.nodes[i]`."""
    error = _error(
        tmp_path, GOOD.replace("    kind: demo_sink\n", "    kind: demo_sink\n    x: 1\n")
    )
    assert error.path == "$.nodes[0]"
    assert "`x`" in error.reason


def test_unknown_node_config_key(tmp_path: Path) -> None:
    """An unknown key in a node's config is refused at `$.nodes[i].config`."""
    error = _error(tmp_path, GOOD + "      max_batches: 2\n")
    assert error.path == "$.nodes[1].config"
    assert "max_batches" in error.reason


def test_bad_config_value_type(tmp_path: Path) -> None:
    """A config value of the wrong type names its full path."""
    error = _error(tmp_path, GOOD.replace("max_batch: 8", "max_batch: eight"))
    assert error.path == "$.nodes[1].config.max_batch"
    assert error.reason == "Expected `int`, got `str`"


def test_out_of_range_config_value(tmp_path: Path) -> None:
    """A config value out of its range names its full path and the bound."""
    error = _error(tmp_path, GOOD.replace("max_batch: 8", "max_batch: 0"))
    assert error.path == "$.nodes[1].config.max_batch"
    assert error.reason == "Expected `int` >= 1"
    assert str(error).endswith("- at `$.nodes[1].config.max_batch`")


def test_nested_config_error_keeps_its_path(tmp_path: Path) -> None:
    """An error inside a nested config struct names the nested path."""
    error = _error(tmp_path, GOOD.replace("task: classification", "task: segmentation"))
    assert error.path == "$.nodes[1].config.engine.task"


def test_out_of_range_node_field(tmp_path: Path) -> None:
    """A node field out of range (replicas) names `$.nodes[i].replicas`."""
    error = _error(tmp_path, GOOD.replace("replicas: 2", "replicas: 65"))
    assert error.path == "$.nodes[1].replicas"


def test_bad_top_level_value(tmp_path: Path) -> None:
    """A launch-level value out of range names its key."""
    error = _error(tmp_path, GOOD.replace("heartbeat_ms: 150", "heartbeat_ms: 5"))
    assert error.path == "$.heartbeat_ms"


def test_invalid_node_name(tmp_path: Path) -> None:
    """A node name outside the allowed pattern is refused at its path."""
    error = _error(tmp_path, GOOD.replace("name: sink", "name: Sink.1"))
    assert error.path == "$.nodes[0].name"


@pytest.mark.parametrize("kind", ["camera", "proxy"])
def test_unknown_kind(tmp_path: Path, kind: str) -> None:
    """A kind that is not a launchable node is refused at `$.nodes[i].kind`."""
    error = _error(tmp_path, GOOD.replace("kind: demo_sink", f"kind: {kind}"))
    assert error.path == "$.nodes[0].kind"
    assert "worker" in error.reason
    assert "proxy" not in error.reason


def test_duplicate_names(tmp_path: Path) -> None:
    """Two nodes with one name are refused at the second one's name."""
    error = _error(tmp_path, GOOD.replace("name: worker", "name: sink"))
    assert error.path == "$.nodes[1].name"
    assert "duplicate node name 'sink'" in error.reason


def test_no_nodes(tmp_path: Path) -> None:
    """A launch file must list at least one node."""
    error = _error(tmp_path, "name: empty\nnodes: []\n")
    assert error.path == "$.nodes"


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"], ids=["empty", "list", "str"])
def test_document_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    """An empty document or one that is not a mapping is refused at `$`."""
    assert _error(tmp_path, text).path == "$"


def test_invalid_yaml(tmp_path: Path) -> None:
    """Text that is not YAML is refused, naming the file."""
    error = _error(tmp_path, "name: x\nnodes: [\n")
    assert error.reason.startswith("invalid YAML")


def test_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load(path, tmp_path)
    assert info.value.source == str(path)
    assert info.value.reason.startswith("cannot read")


def test_config_error_is_a_vigil_error() -> None:
    """ConfigError is caught by `except VigilError`."""
    assert issubclass(ConfigError, VigilError)


# -- software-instance ids ----------------------------------------------------------------


def test_instance_ids_default_to_the_place_in_the_file(tmp_path: Path) -> None:
    """Without instance_id a node's id is 100 times its place; replicas take the next ones;
    the proxy is 1; `--print` shows each id."""
    plan = _plan(tmp_path)
    assert [p.args.instance_id for p in plan.processes] == [100, 200, 201]
    assert plan.proxy is not None and plan.proxy.args.instance_id == 1
    assert "worker.2         worker       id=201 " in plan.describe()


def test_the_proxy_is_restarted_by_the_files_proxy_policy(tmp_path: Path) -> None:
    """The proxy, which no file lists, takes `proxy_restart` (the default policy without it)."""
    default = _plan(tmp_path).proxy
    assert default is not None and default.spec.restart.max_restarts == 5
    policy = "proxy_restart: {max_restarts: 50, window_s: 10}\n"
    plan = _plan(tmp_path, GOOD.replace("heartbeat_ms: 150\n", "heartbeat_ms: 150\n" + policy))
    assert plan.proxy is not None
    assert (plan.proxy.spec.restart.max_restarts, plan.proxy.spec.restart.window_s) == (50, 10)
    assert plan.proxy.spec.required


def test_instance_id_is_assigned_in_the_launch_file(tmp_path: Path) -> None:
    """`instance_id:` sets a node's id (and its replicas' after it)."""
    plan = _plan(
        tmp_path, GOOD.replace("    replicas: 2\n", "    replicas: 2\n    instance_id: 40\n")
    )
    assert [p.args.instance_id for p in plan.processes] == [100, 40, 41]


def test_instance_ids_must_be_unique(tmp_path: Path) -> None:
    """Two processes with one id are refused at the second node's instance_id."""
    text = GOOD.replace("    replicas: 2\n", "    replicas: 2\n    instance_id: 99\n")
    error = _error(
        tmp_path, text.replace("kind: demo_sink\n", "kind: demo_sink\n    instance_id: 100\n")
    )
    assert error.path == "$.nodes[1].instance_id"
    assert "instance id 100 is sink's" in error.reason
