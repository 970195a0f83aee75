"""A third-party plugin's faults at save and export are amber errors naming the plugin, and nothing
is written: capture hooks that raise or return the wrong type, exporters that raise or return no list,
formats that write beside their sink; and an exporter's shorthand and options reach it from
``Policy.export_model`` and ``amber export``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber import components
from amber.cli import CliState, cli
from amber.errors import (
    CheckpointError,
    CheckpointWriteError,
    ExportError,
    InvalidStateError,
    PluginLoadError,
    UnknownExporterError,
)
from amber.export import Dense, ModelGraph, Output, Preprocess, export_model
from amber.plugin_manager import get_plugin_manager
from amber.registry import Capabilities, ExportedFile, ExporterSpec, FormatSpec
from amber.utils.checkpoints import verify

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class Gizmo:
    """A component a plugin adds to every owner and captures itself."""


class GizmoPlugin:
    """``mode``: "ok", "raise" (its capture raises) or "list" (its components come as a list)."""

    mode = "ok"

    @amber.hookimpl
    def amber_register_components(self, owner):
        if self.mode == "components_raise":
            raise LookupError("registry offline")
        return [("gizmo", Gizmo())] if self.mode == "list" else {"gizmo": Gizmo()}

    @amber.hookimpl
    def amber_capture_state(self, component, key):
        if not isinstance(component, Gizmo):
            return None
        if self.mode == "raise":
            raise RuntimeError("sensor offline")
        return {"on": True}

    @amber.hookimpl
    def amber_restore_state(self, component, state):
        return True if isinstance(component, Gizmo) else None


def _gizmo_pm(mode: str):
    pm = get_plugin_manager(autoload=False)
    plugin = GizmoPlugin()
    plugin.mode = mode
    pm.register(plugin, name="gizmo_plugin")
    return pm


def _snapshot(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


# -- capture hooks -----------------------------------------------------------------------------


def test_a_capture_hook_that_raises_is_a_plugin_error_naming_the_component_and_plugin():
    with pytest.raises(PluginLoadError) as e:
        components.capture({}, {}, pm=_gizmo_pm("raise"))
    assert "'gizmo' (Gizmo)" in str(e.value) and "plugin 'gizmo_plugin'" in str(e.value)
    assert "RuntimeError: sensor offline" in str(e.value) and e.value.plugin == "gizmo_plugin"
    assert isinstance(e.value.__cause__, RuntimeError)


def test_components_returned_as_a_list_name_the_plugin():
    with pytest.raises(PluginLoadError, match=r"plugin 'gizmo_plugin' returned a list from "
                                              r"amber_register_components for dict") as e:
        components.capture({}, {}, pm=_gizmo_pm("list"))
    assert e.value.plugin == "gizmo_plugin"


def test_components_hook_that_raises_names_the_plugin_at_capture_and_restore():
    pm = _gizmo_pm("components_raise")
    with pytest.raises(PluginLoadError, match=r"listing the components of dict failed in plugin "
                                              r"'gizmo_plugin'.*LookupError: registry offline"):
        components.capture({}, {}, pm=pm)
    with pytest.raises(PluginLoadError, match="listing the components.*registry offline"):
        components.restore({}, {}, {"gizmo": {}}, pm=pm)


def test_a_components_own_get_state_error_is_raised_as_it_is(bare_pm):
    """amber's in-tree plugins call the component's own code: its error (a runner's death) is its own."""
    class Stateful:
        def get_state(self):
            raise ValueError("my own bug")

        def set_state(self, state):
            pass

    with pytest.raises(ValueError, match="my own bug"):
        components.capture(None, {"s": Stateful()}, pm=bare_pm)


@pytest.fixture(scope="module")
def algo_pm():
    """An algorithm whose plugin manager has the gizmo plugin and the exporters below; that plugin; the
    plugin manager."""
    from amber.algorithms.ppo import PPOConfig

    pm = get_plugin_manager(autoload=False)
    plugin = GizmoPlugin()
    pm.register(plugin, name="gizmo_plugin")
    pm.register(CsvExporter(), name="csv_export")
    pm.register(FaultyExporters(), name="faulty_export")
    algo = (PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [4]})
            .checkpointing(plugin_manager=pm).build())
    yield algo, plugin, pm
    algo.stop()


@pytest.mark.parametrize("mode", ["raise", "list"])
def test_a_faulty_capture_fails_the_save_leaving_the_old_checkpoint(algo_pm, tmp_path, mode):
    algo, plugin, _ = algo_pm
    plugin.mode = "ok"
    ck = Path(algo.save(tmp_path / "ck", format="msgpack").checkpoint.path)
    before = _snapshot(ck)
    plugin.mode = mode
    try:
        with pytest.raises(PluginLoadError, match="gizmo_plugin") as e:
            algo.save(ck, format="msgpack")
        assert e.value.plugin == "gizmo_plugin"
        assert _snapshot(ck) == before and sorted(os.listdir(tmp_path)) == ["ck"]
        # restoring captures the current state first: its fault is the plugin's, not the checkpoint's
        with pytest.raises(PluginLoadError, match="gizmo_plugin") as e:
            algo.restore(ck)
        assert not isinstance(e.value, InvalidStateError) and "does not fit" not in str(e.value)
    finally:
        plugin.mode = "ok"


# -- exporters -----------------------------------------------------------------------------------


def export_csv(graph, directory, options):
    """Weights as CSV, with the options ``precision`` (digits) and ``delimiter``."""
    digits, sep = options.get("precision", 6), options.get("delimiter", ",")
    rows = [sep.join(f"{x:.{digits}f}" for x in layer.weight.ravel()) for layer in graph.towers["pi"]]
    (directory / "w.csv").write_text("\n".join(rows))
    return [directory / "w.csv"]


class CsvExporter:
    @amber.hookimpl
    def amber_register_exporters(self):
        return [ExporterSpec(name="csv", export=export_csv, files=(ExportedFile("w.csv", "open(path)", "python"),),
                             shorthand="csv_precision", shorthand_option="precision",
                             options=("precision", "delimiter"))]


def _raising(graph, directory, options):
    (directory / "half.bin").write_bytes(b"x")
    raise RuntimeError("exporter broke")


def _returning_int(graph, directory, options):
    (directory / "half.bin").write_bytes(b"x")
    return 42


class FaultyExporters:
    @amber.hookimpl
    def amber_register_exporters(self):
        files = (ExportedFile("half.bin", "open(path)", "python"),)
        return [ExporterSpec(name="raising", export=_raising, files=files),
                ExporterSpec(name="badret", export=_returning_int, files=files)]


GRAPH = ModelGraph((2,), Preprocess("flatten", 2), {"pi": [Dense(np.ones((3, 2), np.float32),
                                                                  np.zeros(3, np.float32))]},
                   [Output("action_dist_inputs", "identity", ("pi",))], framework="torch")


@pytest.mark.parametrize(("name", "said"), [("raising", "failed: RuntimeError: exporter broke"),
                                            ("badret", "returned int 42 from export(), not a list")])
def test_a_faulty_exporter_is_an_export_error_naming_it_and_changes_nothing(tmp_path, name, said):
    pm = get_plugin_manager(autoload=False)
    pm.register(FaultyExporters(), name="faulty_export")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError) as e:
        export_model(GRAPH, tmp_path, format=name, pm=pm)
    assert f"the {name!r} exporter (plugin 'faulty_export')" in str(e.value) and said in str(e.value)
    assert e.value.plugin == "faulty_export"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def invoke(pm, *args):
    return CliRunner().invoke(cli, [str(a) for a in args], obj=CliState(plugin_manager=pm))


@pytest.fixture(scope="module")
def checkpoint(algo_pm, tmp_path_factory):
    algo, plugin, _ = algo_pm
    plugin.mode = "ok"
    return Path(algo.save(tmp_path_factory.mktemp("ck") / "ck", format="msgpack").checkpoint.path)


def test_amber_export_with_a_faulty_exporter_is_one_error_line(algo_pm, checkpoint, tmp_path):
    result = invoke(algo_pm[2], "export", checkpoint, tmp_path / "out", "--format", "raising")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [result.stderr.strip()] and "Traceback" not in result.output
    assert result.stderr.startswith("amber: error: the 'raising' exporter (plugin 'faulty_export') failed")
    assert not (tmp_path / "out").exists()


# -- formats writing beside their sink -------------------------------------------------------------


def _format_pm(write):
    class Direct:
        @amber.hookimpl
        def amber_register_formats(self):
            return [FormatSpec(name="direct", extension=".dj", capabilities=Capabilities(True, True, False),
                               write=write, read=lambda source: json.loads(bytes(source.read())))]

    pm = get_plugin_manager(autoload=False)
    pm.register(Direct(), name="direct_fmt")
    return pm


def _sidecar_directly(state, sink):
    with sink.open() as f:
        f.write(json.dumps(state).encode())
    Path(f"{sink.path}.extra").write_bytes(b"written directly")


def _state_directly(state, sink):
    Path(sink.path).write_bytes(json.dumps(state).encode())


@pytest.mark.parametrize(("write", "named"), [(_sidecar_directly, "state.dj.extra"),
                                              (_state_directly, "state.dj")])
def test_a_file_written_beside_the_sink_fails_the_save(tmp_path, write, named):
    pm = _format_pm(write)
    path = amber.save({"a": 1}, tmp_path / "ck", format="msgpack", pm=pm)
    before = _snapshot(path)
    with pytest.raises(CheckpointWriteError) as e:
        amber.save({"a": 2}, path, format="direct", pm=pm)
    message = str(e.value)
    assert f"format 'direct' wrote {named} in {path} directly, not through sink.open()" in message
    assert "wrote no" not in message and e.value.format == "direct" and e.value.plugin == "direct_fmt"
    assert _snapshot(path) == before and sorted(os.listdir(tmp_path)) == ["ck"]
    assert verify(path).ok and amber.load(path, pm=pm) == {"a": 1}


# -- an exporter's shorthand and options -------------------------------------------------------------


def _decimals(directory, sep=",") -> set[int]:
    """How many decimals each number of the first row of w.csv has."""
    row = Path(directory, "w.csv").read_text().splitlines()[0]
    return {len(x.split(".")[1]) for x in row.split(sep)}


def test_policy_export_model_takes_an_exporters_shorthand_and_options(algo_pm, tmp_path):
    algo, _, pm = algo_pm
    policy = algo.get_policy()
    policy.export_model(tmp_path / "a", csv_precision=2, pm=pm)
    assert _decimals(tmp_path / "a") == {2}
    policy.export_model(tmp_path / "b", format="csv", precision=3, delimiter=";", pm=pm)
    facts = json.loads((tmp_path / "b" / "model.json").read_text())["files"]["w.csv"]
    assert facts["precision"] == 3 and facts["delimiter"] == ";" and facts["exporter"] == "csv"
    assert _decimals(tmp_path / "b", ";") == {3}


def test_an_option_the_exporter_does_not_declare_is_refused(algo_pm, tmp_path):
    policy, pm = algo_pm[0].get_policy(), algo_pm[2]
    with pytest.raises(ExportError, match=r"^the 'csv' exporter \(plugin 'csv_export'\) takes no option "
                                          r"precison \(its options: delimiter, precision\); did you mean "
                                          r"precision\?") as e:
        policy.export_model(tmp_path / "c", format="csv", precison=3, pm=pm)
    assert e.value.plugin == "csv_export" and not (tmp_path / "c").exists()
    with pytest.raises(ExportError, match=r"'torch' exporter .*takes no option opset \(it takes no options\)"):
        policy.export_model(tmp_path / "c", format="torch", opset=3, pm=pm)
    with pytest.raises(ExportError, match="'keras' exporter .*takes no option native"):
        policy.export_model(tmp_path / "c", format="keras", native=True, pm=pm)  # amber's own, not a user's
    with pytest.raises(UnknownExporterError, match=r"no exporter takes the keyword csv_precison=.*format=NAME"):
        policy.export_model(tmp_path / "c", csv_precison=3, pm=pm)
    with pytest.raises(ExportError, match="precision of the 'csv' exporter is given twice"):
        policy.export_model(tmp_path / "c", format="csv", csv_precision=3, precision=4, pm=pm)
    assert not (tmp_path / "c").exists()


class Counted:
    """An exporter reading its option ``scale`` only for graphs with a value tower, and through
    ``dict.get``; counting its runs."""

    runs = 0

    @staticmethod
    def export(graph, directory, options):
        Counted.runs += 1
        scale = dict.get(options, "scale", 1) if "vf" in graph.towers else 1
        (directory / "w.txt").write_text(str(scale))
        return [directory / "w.txt"]

    @amber.hookimpl
    def amber_register_exporters(self):
        return [ExporterSpec(name="counted", export=Counted.export, options=frozenset({"scale"}))]


def test_options_are_checked_against_the_declaration_before_the_exporter_runs(tmp_path):
    """The options had been refused after the exporter ran, when it had not looked one up: wrongly
    for one read on some graphs only, or through ``dict.get``."""
    pm = get_plugin_manager(autoload=False)
    pm.register(Counted(), name="counted_export")
    Counted.runs = 0
    export_model(GRAPH, tmp_path / "a", format="counted", scale=2, pm=pm)  # GRAPH has no vf: not read
    assert json.loads((tmp_path / "a" / "model.json").read_text())["files"]["w.txt"]["scale"] == 2
    assert Counted.runs == 1
    with pytest.raises(ExportError, match=r"takes no option scal \(its options: scale\); did you mean scale"):
        export_model(GRAPH, tmp_path / "b", format="counted", scal=2, pm=pm)
    assert Counted.runs == 1 and not (tmp_path / "b").exists()  # refused before it ran


def test_a_shorthand_option_is_always_declared():
    spec = ExporterSpec(name="x", export=export_csv, shorthand="x_level", shorthand_option="level",
                        options=["mode"])
    assert spec.options == ("mode", "level")
    with pytest.raises(ValueError, match="options is a collection of names"):
        ExporterSpec(name="x", export=export_csv, options="mode")
    onnx = get_plugin_manager(autoload=False).hook.amber_register_exporters()
    assert {s.name: s.options for specs in onnx for s in specs} == {"torch": (), "onnx": ("opset",),
                                                                   "keras": ()}


def test_amber_export_passes_options_to_the_format_exporter(algo_pm, checkpoint, tmp_path):
    pm = algo_pm[2]
    result = invoke(pm, "export", checkpoint, tmp_path / "out", "--format", "csv", "-o", "precision=1",
                    "-o", "delimiter=;")
    assert result.exit_code == 0, result.output
    facts = json.loads((tmp_path / "out" / "model.json").read_text())["files"]["w.csv"]
    assert (facts["precision"], facts["delimiter"]) == (1, ";")
    for args, said in [(["-o", "precision=1"], "-o gives options to the exporter --format names"),
                       (["--format", "csv", "-o", "precison=1"], "takes no option precison"),
                       (["--format", "csv", "-o", "policy_id=x"], "policy_id is not an exporter option"),
                       (["--format", "csv", "-o", "precision"], "is not key=value")]:
        result = invoke(pm, "export", checkpoint, tmp_path / "bad", *args)
        assert result.exit_code == 2 and said in result.stderr, result.output
        assert "Traceback" not in result.output and not (tmp_path / "bad").exists()
    # an undeclared option fails before the checkpoint is read (there is none here)
    result = invoke(pm, "export", tmp_path / "none", tmp_path / "bad", "--format", "csv", "-o", "precison=1")
    assert result.exit_code == 2 and "takes no option precison" in result.stderr, result.output


def test_keyword_checks_fail_before_anything_is_written(tmp_path):
    """A plain CheckpointError subclass, a KeyError too, as unknown exporter names are."""
    with pytest.raises(UnknownExporterError) as e:
        export_model(GRAPH, tmp_path / "x", csv_precision=3, pm=get_plugin_manager(autoload=False))
    assert isinstance(e.value, CheckpointError) and isinstance(e.value, KeyError)
    assert not (tmp_path / "x").exists()


class EnvCaptureRaises:
    """A plugin whose capture hook fails on environments."""

    @amber.hookimpl(tryfirst=True)
    def amber_capture_state(self, component, key):
        import gymnasium

        if isinstance(component, gymnasium.Env):
            raise RuntimeError("env probe offline")
        return None


def test_a_capture_hook_failing_on_an_env_names_the_plugin(tmp_path):
    """The env runner retried a failed env capture env by env through the raw hook: the plugin's
    error came out raw, naming no plugin."""
    from amber.algorithms.ppo import PPOConfig

    pm = get_plugin_manager()
    pm.register(EnvCaptureRaises(), name="env_probe")
    algo = (PPOConfig().environment("CartPole-v1").checkpointing(plugin_manager=pm)
            .training(model={"fcnet_hiddens": [4]}, train_batch_size=32, minibatch_size=16, num_epochs=1)
            .build())
    try:
        algo.train()  # the env has been reset: its state is captured at save
        with pytest.raises(PluginLoadError, match="env_probe.*env probe offline") as e:
            algo.save(tmp_path / "ck", format="msgpack")
        assert e.value.plugin == "env_probe" and not (tmp_path / "ck").exists()
    finally:
        algo.stop()
