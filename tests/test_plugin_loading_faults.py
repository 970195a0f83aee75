"""Faulty installed plugins are named, not silently dropped nor shown as a bare traceback.

Each test lays out small distributions (a module and a ``.dist-info`` with
``entry_points.txt``, all that entry-point discovery reads) in a temporary
directory put on ``sys.path`` for the test alone.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import amber
import amber.plugin_manager
from amber.checkpoint import detect_format
from amber.checkpoint_read import Checkpoint
from amber.errors import CheckpointError, PluginLoadError
from amber.migration import CHECKPOINT_VERSION
from amber.plugin_manager import get_plugin_manager
from amber.registry import get_registry
from amber.utils.checkpoints import get_checkpoint_info

ROOT = Path(__file__).resolve().parent.parent

FORMAT = '''
import json
import amber
from amber.registry import Capabilities, FormatSpec


def _write(state, sink):
    with sink.open() as f:
        f.write(json.dumps(state).encode())


def _read(source):
    return json.loads(bytes(source.read()))


SPEC = FormatSpec(name={name!r}, extension=".json", capabilities=Capabilities(True, True, False),
                  write=_write, read=_read, description="test")
'''
MODULE_HOOK = FORMAT + '''

@amber.hookimpl
def amber_register_formats():
    return [SPEC]
'''
CLASS_HOOK = FORMAT + '''

class JsonFormat:
    @amber.hookimpl
    def amber_register_formats(self):
        return [SPEC]
'''
RAISING = '''
import amber


@amber.hookimpl
def {hook}():
    raise RuntimeError("boom in {hook}")
'''
FOREIGN_RAISING = '''
import amber


@amber.hookimpl
def amber_read_foreign_checkpoint(path, policy_ids):
    raise RuntimeError("read fails")


@amber.hookimpl
def amber_describe_foreign_checkpoint(path):
    raise RuntimeError("describe fails")


@amber.hookimpl
def amber_detect_format(path, header):
    raise RuntimeError("detect fails")
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``install(dist, {module: source}, {entry point: value})`` lays out a distribution on ``sys.path``."""
    root = tmp_path / "site"
    root.mkdir()
    modules: list[str] = []
    for name in ("AMBER_DISABLE_PLUGIN_AUTOLOAD", "AMBER_PLUGINS", "AMBER_SAFE_LOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.syspath_prepend(str(root))

    def install(dist: str, sources: dict[str, str], entry_points: dict[str, str]) -> None:
        for module, source in sources.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[amber]\n{lines}")
        importlib.invalidate_caches()

    install.root = root  # type: ignore[attr-defined]
    yield install
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


# --------------------------------------------------------------------------
# entry points of one name
# --------------------------------------------------------------------------


def test_two_distributions_with_one_entry_point_name_are_named(site) -> None:
    site("amber-t-one", {"amber_t_one": MODULE_HOOK.format(name="one")}, {"xjson": "amber_t_one"})
    site("amber-t-two", {"amber_t_two": MODULE_HOOK.format(name="two")}, {"xjson": "amber_t_two"})
    for allow in (None, ["xjson"]):
        with pytest.raises(PluginLoadError, match="two installed plugins are called 'xjson'") as excinfo:
            get_plugin_manager(allow=allow)
        assert "amber-t-one" in str(excinfo.value) and "amber-t-two" in str(excinfo.value)
        assert excinfo.value.plugin == "xjson"


def test_entry_point_named_like_an_in_tree_plugin_is_refused(site) -> None:
    site("amber-t-clash", {"amber_t_clash": MODULE_HOOK.format(name="ajson")}, {"msgpack_fmt": "amber_t_clash"})
    with pytest.raises(PluginLoadError, match="in-tree plugin amber.plugins.msgpack_fmt") as excinfo:
        get_plugin_manager()
    assert "amber-t-clash" in str(excinfo.value)
    get_plugin_manager(allow=[])  # left out: no error


def test_entry_point_of_an_in_tree_plugin_itself_is_no_clash(site) -> None:
    site("amber-t-self", {}, {"msgpack_fmt": "amber.plugins.msgpack_fmt"})
    assert "msgpack" in get_registry(get_plugin_manager()).names()


# --------------------------------------------------------------------------
# what an entry point names: a module, an instance, not a class
# --------------------------------------------------------------------------


def test_entry_point_at_an_instance_registers_it(site) -> None:
    site("amber-t-inst", {"amber_t_inst": CLASS_HOOK.format(name="ijson") + "\nplugin = JsonFormat()\n"},
         {"ijson": "amber_t_inst:plugin"})
    reg = get_registry(get_plugin_manager())
    assert reg.provider("ijson").distribution == "amber-t-inst"


def test_entry_point_at_a_class_is_refused(site) -> None:
    site("amber-t-cls", {"amber_t_cls": CLASS_HOOK.format(name="cjson")}, {"cjson": "amber_t_cls:JsonFormat"})
    with pytest.raises(PluginLoadError, match="is the class amber_t_cls:JsonFormat") as excinfo:
        get_plugin_manager()
    assert "instance" in str(excinfo.value) and "amber-t-cls" in str(excinfo.value)


@pytest.mark.parametrize(("source", "said"), [
    (CLASS_HOOK.format(name="mjson"), "the hooks of JsonFormat are methods"),
    (FORMAT.format(name="ujson") + "\ndef amber_register_formats():\n    return [SPEC]\n",
     "amber_register_formats is not marked @amber.hookimpl"),
], ids=["class-in-module", "undecorated"])
def test_entry_point_at_a_module_with_no_hook_is_warned_about(site, source: str, said: str) -> None:
    site("amber-t-mod", {"amber_t_mod": source}, {"mjson": "amber_t_mod"})
    with pytest.warns(UserWarning, match="plugin 'mjson'.*amber-t-mod.*registers no hook") as record:
        pm = get_plugin_manager()
    assert said in str(record[0].message)
    assert get_registry(pm).names() == ["msgpack", "pickle"]


# --------------------------------------------------------------------------
# registration hooks that raise or return the wrong thing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["amber_register_formats", "amber_register_exporters",
                                  "amber_register_migrations", "amber_register_names"])
def test_registration_hook_that_raises_is_named(site, tmp_path: Path, hook: str) -> None:
    ck = amber.save({"k": 1}, tmp_path / "ck", pm=get_plugin_manager(autoload=False))
    site("amber-t-raise", {"amber_t_raise": RAISING.format(hook=hook)}, {"braise": "amber_t_raise"})
    pm = get_plugin_manager()
    with pytest.raises(PluginLoadError, match=f"plugin 'braise' \\(distribution amber-t-raise\\) failed in "
                                              f"{hook}: RuntimeError: boom in {hook}") as excinfo:
        amber.load(ck, pm=pm)
    assert excinfo.value.plugin == "braise" and "AMBER_PLUGINS" in str(excinfo.value)


@pytest.mark.parametrize(("hook", "returned"), [
    ("amber_register_formats", "SPEC"),
    ("amber_register_formats", "{SPEC.name: SPEC}"),
    ("amber_register_names", "[amber.hookimpl]"),
])
def test_registration_hook_returning_no_list_is_named(site, hook: str, returned: str) -> None:
    source = FORMAT.format(name="bsingle") + f"\n@amber.hookimpl\ndef {hook}():\n    return {returned}\n"
    site("amber-t-single", {"amber_t_single": source}, {"bsingle": "amber_t_single"})
    with pytest.raises(PluginLoadError, match=f"plugin 'bsingle' \\(distribution amber-t-single\\) "
                                              f"returned a \\w+ from {hook}, expected a"):
        get_registry(get_plugin_manager())


def test_cli_reports_a_failing_plugin_in_one_line(site, tmp_path: Path) -> None:
    site("amber-t-raise", {"amber_t_raise": RAISING.format(hook="amber_register_formats")},
         {"braise": "amber_t_raise"})
    site("amber-t-foreign", {"amber_t_foreign": FOREIGN_RAISING}, {"bforeign": "amber_t_foreign"})
    (tmp_path / "notack").mkdir()
    path = [str(site.root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    for plugin, args, said in (("braise", ["formats"], "failed in amber_register_formats"),
                               ("bforeign", ["inspect", str(tmp_path / "notack")],
                                "failed in amber_describe_foreign_checkpoint on")):
        proc = subprocess.run([sys.executable, "-m", "amber", *args], capture_output=True, text=True,
                              env={**env, "AMBER_PLUGINS": plugin}, cwd=ROOT, timeout=120, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith(f"amber: error: plugin {plugin!r}") and said in proc.stderr


# --------------------------------------------------------------------------
# first-result hooks: foreign checkpoints and format detection
# --------------------------------------------------------------------------


class _Reads:
    """Another plugin, which reads and describes any directory."""

    @amber.hookimpl
    def amber_read_foreign_checkpoint(self, path, policy_ids):
        return Checkpoint(path=path, type="State", format="msgpack", checkpoint_version=CHECKPOINT_VERSION,
                          state={"read": "by another plugin"})


def test_failing_foreign_reader_is_named_when_no_plugin_reads(site, tmp_path: Path, monkeypatch) -> None:
    site("amber-t-foreign", {"amber_t_foreign": FOREIGN_RAISING}, {"bforeign": "amber_t_foreign"})
    pm = get_plugin_manager()
    (tmp_path / "notack").mkdir()
    with pytest.raises(PluginLoadError, match="plugin 'bforeign' \\(distribution amber-t-foreign\\) failed in "
                                              "amber_read_foreign_checkpoint on .*notack: RuntimeError: "
                                              "read fails, and no other plugin recognises it; fix or "
                                              "uninstall amber-t-foreign") as excinfo:
        amber.load(tmp_path / "notack", pm=pm)
    assert excinfo.value.plugin == "bforeign" and excinfo.value.path == str(tmp_path / "notack")
    monkeypatch.setattr(amber.plugin_manager, "default_plugin_manager", lambda: pm)
    with pytest.raises(CheckpointError, match="failed in amber_describe_foreign_checkpoint"):
        get_checkpoint_info(tmp_path / "notack")


def test_a_failing_in_tree_plugin_is_amber_s_fault_to_report(tmp_path: Path, monkeypatch) -> None:
    """It had been a bare CheckpointError advising the user to fix or unregister amber's own plugin."""
    import amber.plugins.rllib_compat as rllib_compat

    @amber.hookimpl
    def amber_read_foreign_checkpoint(path, policy_ids):
        raise RuntimeError("a bug of amber's")

    monkeypatch.setattr(rllib_compat, "amber_read_foreign_checkpoint", amber_read_foreign_checkpoint)
    (tmp_path / "notack").mkdir()
    with pytest.raises(PluginLoadError, match="plugin 'rllib_compat' failed in amber_read_foreign_checkpoint "
                                              ".*a bug of amber's, and no other plugin recognises it; this is "
                                              "a fault of amber's plugin 'rllib_compat', to report") as e:
        amber.load(tmp_path / "notack", pm=get_plugin_manager(autoload=False))
    assert e.value.plugin == "rllib_compat" and "unregister" not in str(e.value)


def test_failing_foreign_reader_does_not_stop_another_plugin(site, tmp_path: Path) -> None:
    site("amber-t-foreign", {"amber_t_foreign": FOREIGN_RAISING}, {"bforeign": "amber_t_foreign"})
    pm = get_plugin_manager(autoload=False)
    pm.register(_Reads(), name="reads")
    pm.register(importlib.import_module("amber_t_foreign"), name="bforeign")  # asked first (registered last)
    (tmp_path / "other").mkdir()
    with pytest.warns(UserWarning, match="plugin 'bforeign' failed in amber_read_foreign_checkpoint.*"
                                         "another plugin answered"):
        assert amber.load(tmp_path / "other", pm=pm) == {"read": "by another plugin"}


def test_plugin_refusal_is_raised_as_it_is(tmp_path: Path) -> None:
    class Refuses:
        @amber.hookimpl
        def amber_read_foreign_checkpoint(self, path, policy_ids):
            raise CheckpointError("that system's pickles are not read: convert it first", path=path)

    pm = get_plugin_manager(autoload=False)
    pm.register(Refuses(), name="refuses")
    (tmp_path / "theirs").mkdir()
    with pytest.raises(CheckpointError, match="^that system's pickles are not read: convert it first"):
        amber.load(tmp_path / "theirs", pm=pm)


def test_failing_detect_hook_does_not_stop_the_format_that_knows_the_file(site, tmp_path: Path) -> None:
    site("amber-t-foreign", {"amber_t_foreign": FOREIGN_RAISING}, {"bforeign": "amber_t_foreign"})
    pm = get_plugin_manager()
    ck = amber.save({"k": 1}, tmp_path / "ck", format="msgpack", pm=pm)
    (state,) = [p for p in ck.iterdir() if p.name.startswith("state")]
    with pytest.warns(UserWarning, match="plugin 'bforeign'.*failed in amber_detect_format"):
        assert detect_format(state, pm=pm) == "msgpack"
    (tmp_path / "unknown.bin").write_bytes(b"\x00nothing anyone knows")
    with pytest.raises(CheckpointError, match="failed in amber_detect_format on .*unknown.bin"):
        detect_format(tmp_path / "unknown.bin", pm=pm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amber.load(ck, pm=pm) == {"k": 1}  # loaders use checkpoint.json, not the hook
