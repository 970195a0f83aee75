"""The engine: plugin manager, registry, components, layout rules, safety, versions."""

from __future__ import annotations

import json
import random
import re
import types
import warnings
from pathlib import Path

import numpy as np
import pluggy
import pytest

import amber
from amber import components
from amber.checkpoint import CHECKPOINT_VERSION, read_checkpoint, write_checkpoint
from amber.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    DuplicateFormatError,
    InvalidIdError,
    MigrationError,
    MissingPluginError,
    NotACheckpointError,
    UnknownFormatError,
    UnknownPolicyError,
    UnregisteredNameError,
    UnsafeContentError,
    UnserializableStateError,
    UnsupportedVersionError,
)
from amber.plugin_manager import DEFAULT_PLUGINS, get_plugin_manager
from amber.registry import Capabilities, FormatSpec, Migration, build_registry, get_registry
from amber.utils.checkpoints import verify

from .treeutil import write_raw_manifest

# -- plugin manager and registry ------------------------------------------------


def test_default_plugins_register_formats_by_name(bare_pm):
    reg = get_registry(bare_pm)
    assert {"pickle", "msgpack"} <= set(reg.names())
    assert reg.get("pickle").capabilities == Capabilities(False, False, True)
    assert reg.provider("pickle").plugin == "pickle_fmt"
    names = {name for name, _ in bare_pm.list_name_plugin()}
    assert {m.rsplit(".", 1)[-1] for m in DEFAULT_PLUGINS} <= names


def test_unknown_format_lists_known_names(bare_pm):
    with pytest.raises(UnknownFormatError) as e:
        get_registry(bare_pm).get("yaml")
    assert "yaml" in str(e.value) and "pickle" in str(e.value) and "msgpack" in str(e.value)
    assert isinstance(e.value, KeyError) and isinstance(e.value, CheckpointError)


def test_unknown_format_at_save_names_choices(bare_pm, tmp_path):
    with pytest.raises(UnknownFormatError, match="known formats"):
        amber.save({"a": 1}, tmp_path / "c", format="nope", pm=bare_pm)
    assert not (tmp_path / "c").exists()


def _format_plugin(name: str) -> types.SimpleNamespace:
    spec = FormatSpec(name, ".x", Capabilities(True, True, False), lambda s, k: None, lambda s: None)

    class Plugin:
        @amber.hookimpl
        def amber_register_formats(self):
            return [spec]

    return Plugin()


def test_installing_a_portable_format_never_changes_what_save_writes_by_default(bare_pm, tmp_path):
    bare_pm.register(_format_plugin("aaa"), name="aaa_fmt")  # portable, safe, and first by name
    path = amber.save({"w": np.zeros(3)}, tmp_path / "c", pm=bare_pm)
    assert json.loads((path / "checkpoint.json").read_text())["format"] == "msgpack"
    assert get_registry(bare_pm).default_portable() == "msgpack"
    bare_pm.unregister(name="msgpack_fmt")  # without amber's own: the first portable, safe one by name
    assert build_registry(bare_pm).default_portable() == "aaa"


def test_duplicate_format_name_names_both_providers(bare_pm):
    bare_pm.register(_format_plugin("pickle"), name="impostor")
    with pytest.raises(DuplicateFormatError) as e:
        build_registry(bare_pm)
    assert "pickle_fmt" in str(e.value) and "impostor" in str(e.value)


def test_hookimpl_with_wrong_argument_is_refused(bare_pm):
    class Bad:
        @amber.hookimpl
        def amber_capture_state(self, component, nonsense):
            return None

    with pytest.raises(pluggy.PluginValidationError):
        bare_pm.register(Bad())


def test_autoload_env_switch(monkeypatch):
    calls = []
    monkeypatch.setattr(
        pluggy.PluginManager, "load_setuptools_entrypoints",
        lambda self, group, name=None: calls.append((group, name)) or 0,
    )
    monkeypatch.setenv("AMBER_DISABLE_PLUGIN_AUTOLOAD", "1")
    get_plugin_manager()
    assert calls == []
    monkeypatch.delenv("AMBER_DISABLE_PLUGIN_AUTOLOAD")
    monkeypatch.setenv("AMBER_PLUGINS", "a, b")
    with pytest.warns(UserWarning, match="AMBER_PLUGINS names a, b, which no installed plugin is called"):
        get_plugin_manager()
    assert calls == [("amber", "a"), ("amber", "b")]
    calls.clear()
    with pytest.warns(UserWarning, match="allow names c"):
        get_plugin_manager(allow=["c"])
    assert calls == [("amber", "c")]


def test_hook_tracing_writes_calls(capsys):
    pm = get_plugin_manager(autoload=False, trace=True)
    build_registry(pm)
    assert "amber_register_formats" in capsys.readouterr().err


# -- state capture ----------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def get_state(self):
        return {"n": self.n}

    def set_state(self, state):
        if state["n"] < 0:
            raise ValueError("negative")
        self.n = state["n"]


def test_capture_and_restore_rngs_and_stateful(bare_pm):
    own = {"np": np.random.default_rng(1), "py": random.Random(2),
           "legacy": np.random.RandomState(3), "counter": Counter()}
    own["counter"].n = 5
    saved = components.capture(object(), own, pm=bare_pm)
    expected = (own["np"].random(3), own["py"].random(), own["legacy"].rand())
    own["counter"].n = 9
    components.restore(object(), own, saved, pm=bare_pm)
    assert (own["np"].random(3) == expected[0]).all()
    assert own["py"].random() == expected[1] and own["legacy"].rand() == expected[2]
    assert own["counter"].n == 5


def test_captured_rng_state_survives_a_portable_checkpoint(bare_pm, tmp_path):
    own = {"np": np.random.default_rng(7), "py": random.Random(8)}
    saved = components.capture(None, own, pm=bare_pm)
    want = (own["np"].integers(0, 2**62, 4), own["py"].getrandbits(64))
    amber.save(saved, tmp_path / "rng", format="msgpack", pm=bare_pm)
    components.restore(None, own, amber.load(tmp_path / "rng", pm=bare_pm), pm=bare_pm)
    assert (own["np"].integers(0, 2**62, 4) == want[0]).all() and own["py"].getrandbits(64) == want[1]


def test_failed_restore_leaves_every_component_as_it_was(bare_pm):
    a, b = Counter(), Counter()
    a.n, b.n = 1, 2
    with pytest.raises(CheckpointError, match="'b'"):
        components.restore(None, {"a": a, "b": b}, {"a": {"n": 10}, "b": {"n": -1}}, pm=bare_pm)
    assert (a.n, b.n) == (1, 2)


def test_uncapturable_component_is_named(bare_pm):
    with pytest.raises(CheckpointError, match="'env'"):
        components.capture(None, {"env": object()}, pm=bare_pm)


def test_plugins_add_components(bare_pm):
    extra = Counter()
    extra.n = 3

    class Adds:
        @amber.hookimpl
        def amber_register_components(self, owner):
            return {"normalizer": extra} if isinstance(owner, dict) else None

    bare_pm.register(Adds())
    assert components.capture({}, {}, pm=bare_pm) == {"normalizer": {"n": 3}}
    assert components.capture(None, {}, pm=bare_pm) == {}
    with pytest.raises(CheckpointError, match="used twice"):
        components.capture({}, {"normalizer": Counter()}, pm=bare_pm)


def test_user_hook_captures_own_type_first(bare_pm):
    class Env:
        pos = 1.5

    class EnvPlugin:
        @amber.hookimpl
        def amber_capture_state(self, component):
            return {"pos": component.pos} if isinstance(component, Env) else None

        @amber.hookimpl
        def amber_restore_state(self, component, state):
            if not isinstance(component, Env):
                return None
            component.pos = state["pos"]
            return True

    bare_pm.register(EnvPlugin())
    env = Env()
    saved = components.capture(None, {"env": env}, pm=bare_pm)
    env.pos = 0.0
    components.restore(None, {"env": env}, saved, pm=bare_pm)
    assert env.pos == 1.5


# -- layout, ids, manifests --------------------------------------------------------


def _algo(tmp_path, pm, fmt="msgpack", name="ck"):
    return write_checkpoint(
        tmp_path / name, type="Algorithm", state={"iteration": 3}, format=fmt, pm=pm,
        policies={"pol1": {"w": np.arange(4.0)}, "pol2": {"w": np.ones(3, np.float32)}},
        metadata={"note": "test"},
    )


def test_layout_matches_the_contract(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    assert sorted(p.name for p in path.iterdir()) == ["algorithm_state.msgpck", "checkpoint.json", "policies"]
    top = json.loads((path / "checkpoint.json").read_text())
    for key in ("type", "checkpoint_version", "format", "amber_version", "python_version", "created"):
        assert key in top
    assert top["type"] == "Algorithm" and top["format"] == "msgpack"
    assert top["checkpoint_version"] == CHECKPOINT_VERSION
    assert set(top["files"]) == {"algorithm_state.msgpck", "policies/pol1/checkpoint.json",
                                 "policies/pol2/checkpoint.json"}
    pol = json.loads((path / "policies/pol1/checkpoint.json").read_text())
    assert pol["type"] == "Policy" and pol["policy_id"] == "pol1"
    assert pol["files"]["policy_state.msgpck"]["size"] == (path / "policies/pol1/policy_state.msgpck").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_policy_dir_alone_is_a_policy_checkpoint(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    ckpt = read_checkpoint(path / "policies" / "pol2", pm=bare_pm)
    assert ckpt.type == "Policy" and ckpt.state["w"].dtype == np.float32


def test_subset_read_opens_only_those_policies(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    (path / "policies/pol2/policy_state.msgpck").write_bytes(b"garbage")
    ckpt = read_checkpoint(path, policy_ids=["pol1"], pm=bare_pm)
    assert list(ckpt.policies) == ["pol1"]
    with pytest.raises(CorruptCheckpointError, match="pol2"):
        read_checkpoint(path, pm=bare_pm)
    with pytest.raises(UnknownPolicyError, match="pol1, pol2"):
        read_checkpoint(path, policy_ids=["pol3"], pm=bare_pm)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "x\x00", "tab\there", "x" * 129, 7])
def test_bad_policy_ids_are_refused_at_save(bare_pm, tmp_path, bad):
    with pytest.raises(InvalidIdError):
        write_checkpoint(tmp_path / "c", type="Algorithm", state={}, format="msgpack",
                         policies={bad: {}}, pm=bare_pm)
    assert list(tmp_path.iterdir()) == []


def _rewrite_manifest(path, edit):
    raw = json.loads((path / "checkpoint.json").read_text())
    edit(raw)
    write_raw_manifest(path / "checkpoint.json", raw)


def test_hand_edited_manifest_is_detected(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    text = (path / "checkpoint.json").read_text()
    (path / "checkpoint.json").write_text(text.replace('"note": "test"', '"note": "tost"'))
    with pytest.raises(CorruptCheckpointError, match="own digest"):
        read_checkpoint(path, pm=bare_pm)


def test_bad_policy_id_in_manifest_is_refused_at_load(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    _rewrite_manifest(path, lambda raw: raw["policy_ids"].append("../../etc"))
    with pytest.raises(CorruptCheckpointError, match="checkpoint.json"):
        read_checkpoint(path, pm=bare_pm)


def test_manifest_path_leaving_the_checkpoint_is_refused(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    _rewrite_manifest(path, lambda raw: raw["files"].update({"../x": {"size": 1, "digest": "xxh3_128:" + "0" * 32}}))
    with pytest.raises(CorruptCheckpointError, match="leaves the checkpoint"):
        read_checkpoint(path, pm=bare_pm)


def test_symlinked_state_file_is_refused(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    state = path / "algorithm_state.msgpck"
    real = tmp_path / "elsewhere"
    real.write_bytes(state.read_bytes())
    state.unlink()
    state.symlink_to(real)
    with pytest.raises(CorruptCheckpointError, match="symbolic link"):
        read_checkpoint(path, pm=bare_pm)


def test_symlinked_policy_dir_is_refused(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    moved = tmp_path / "moved"
    (path / "policies/pol1").rename(moved)
    (path / "policies/pol1").symlink_to(moved)
    with pytest.raises(CorruptCheckpointError, match="symbolic link"):
        read_checkpoint(path, policy_ids=["pol1"], pm=bare_pm)


def test_not_a_checkpoint(bare_pm, tmp_path):
    with pytest.raises(NotACheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing", pm=bare_pm)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError, match="no checkpoint.json"):
        read_checkpoint(tmp_path / "empty", pm=bare_pm)
    (tmp_path / "rl").mkdir()
    (tmp_path / "rl" / "rllib_checkpoint.json").write_text('{"type": "Algorithm"}')
    with pytest.raises(CheckpointError, match="rllib_checkpoint.json") as e:  # another system's, malformed
        read_checkpoint(tmp_path / "rl", pm=bare_pm)
    assert str(tmp_path / "rl") in str(e.value)


# -- safety -------------------------------------------------------------------------


def test_safe_load_refuses_pickle_before_opening_it(bare_pm, tmp_path, monkeypatch):
    path = _algo(tmp_path, bare_pm, fmt="pickle")
    opened = []
    import amber.verified_io

    real_open = amber.verified_io.open_nofollow
    monkeypatch.setattr(amber.verified_io, "open_nofollow",
                        lambda root, rel: opened.append(rel) or real_open(root, rel))
    with pytest.raises(UnsafeContentError, match="allow_pickle=True"):
        read_checkpoint(path, allow_pickle=False, pm=bare_pm)
    monkeypatch.setenv("AMBER_SAFE_LOAD", "1")
    with pytest.raises(UnsafeContentError):
        read_checkpoint(path, pm=bare_pm)
    assert not [rel for rel in opened if rel.endswith(".pkl")]
    assert read_checkpoint(path, allow_pickle=True, pm=bare_pm).state == {"iteration": 3}


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", " Off ", "FALSE"])
def test_safe_load_is_off_for_the_usual_false_spellings(bare_pm, tmp_path, monkeypatch, value):
    """AMBER_SAFE_LOAD=off turned safe loading on: a signed pickle checkpoint was refused."""
    path = _algo(tmp_path, bare_pm, fmt="pickle")
    monkeypatch.setenv("AMBER_SAFE_LOAD", value)
    assert read_checkpoint(path, pm=bare_pm).state == {"iteration": 3}


@pytest.mark.parametrize("value", ["1", "true", "yes", "on", " ON ", "maybe"])
def test_safe_load_is_on_for_true_spellings_and_anything_unrecognised(bare_pm, tmp_path, monkeypatch, value):
    path = _algo(tmp_path, bare_pm, fmt="pickle")
    monkeypatch.setenv("AMBER_SAFE_LOAD", value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeContentError):
            read_checkpoint(path, pm=bare_pm)
    warned = [str(w.message) for w in caught if "AMBER_SAFE_LOAD" in str(w.message)]
    assert len(warned) == (value == "maybe") and all("taken as on" in w for w in warned)


def test_missing_plugin_names_what_to_install(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    _rewrite_manifest(path, lambda raw: raw.update(format="zstd", format_plugin={"name": "zstd", "distribution": "amber-zstd"}))
    with pytest.raises(MissingPluginError, match="amber-zstd"):
        read_checkpoint(path, pm=bare_pm)


# -- versions and migrations ---------------------------------------------------------


def test_future_version_is_refused_with_versions(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    _rewrite_manifest(path, lambda raw: raw.update(checkpoint_version="9.0"))
    with pytest.raises(UnsupportedVersionError) as e:
        read_checkpoint(path, pm=bare_pm)
    assert "'9.0'" in str(e.value) and repr(CHECKPOINT_VERSION) in str(e.value) and "upgrade" in str(e.value)


class RenameClip:
    """A migration step as a plugin would ship it: renames a key in every policy."""

    @amber.hookimpl
    def amber_register_migrations(self):
        def apply(trees):
            renamed = {}
            for pid, state in trees.policies.items():
                renamed[pid] = {("clip_param" if k == "clip_coef" else k): v for k, v in state.items()}
            return trees.replace(policies=renamed)

        return [Migration("0.9", "1.0", apply, description="clip_coef is called clip_param")]


FIXTURE_V09 = __import__("pathlib").Path(__file__).parent / "fixtures" / "checkpoint_v0_9"


def test_old_version_fixture_migrates_on_load(bare_pm):
    bare_pm.register(RenameClip())
    ckpt = read_checkpoint(FIXTURE_V09, pm=bare_pm)
    assert ckpt.checkpoint_version == CHECKPOINT_VERSION
    assert ckpt.policies["default_policy"].state == {"clip_param": 0.2, "w": [1.0, 2.0]}


def test_old_version_without_migration_is_refused(bare_pm):
    with pytest.raises(UnsupportedVersionError, match="'0.9'"):
        read_checkpoint(FIXTURE_V09, pm=bare_pm)


def test_migrate_writes_the_current_version(bare_pm, tmp_path):
    from amber.utils.checkpoints import migrate_checkpoint

    bare_pm.register(RenameClip())
    migrate_checkpoint(FIXTURE_V09, tmp_path / "new", pm=bare_pm)
    raw = json.loads((tmp_path / "new" / "checkpoint.json").read_text())
    assert raw["checkpoint_version"] == CHECKPOINT_VERSION
    assert read_checkpoint(tmp_path / "new", pm=get_plugin_manager(autoload=False)).policies[
        "default_policy"].state["clip_param"] == 0.2


def test_failing_migration_is_named(bare_pm):
    class Broken:
        @amber.hookimpl
        def amber_register_migrations(self):
            return [Migration("0.9", "1.0", lambda trees: 1 / 0)]

    bare_pm.register(Broken())
    with pytest.raises(MigrationError, match="0.9 -> 1.0.*ZeroDivisionError"):
        read_checkpoint(FIXTURE_V09, pm=bare_pm)


def test_a_step_that_adds_or_drops_policies_is_named(bare_pm, tmp_path):
    class DropsPolicies:
        @amber.hookimpl
        def amber_register_migrations(self):
            return [Migration("0.9", "1.0", lambda trees: trees.replace(policies={}))]

    bare_pm.register(DropsPolicies())
    ck = write_checkpoint(tmp_path / "ck", type="Algorithm", format="msgpack", state={},
                          policies={"p0": {"w": 1}}, checkpoint_version="0.9", pm=bare_pm)
    blamed = r"migration 0\.9 -> 1\.0 changed the set of policies of .*; dropped 'p0'"
    with pytest.raises(MigrationError, match=blamed):  # not amber's own last step
        read_checkpoint(ck, pm=bare_pm)
    with pytest.raises(MigrationError, match=blamed):  # a dry run runs the steps too
        amber.migrate(ck, dry_run=True, pm=bare_pm)


# -- writing --------------------------------------------------------------------------


def test_overwrite_replaces_a_checkpoint_whole(bare_pm, tmp_path):
    path = _algo(tmp_path, bare_pm)
    write_checkpoint(path, type="Algorithm", state={"iteration": 4}, format="pickle",
                     policies={"solo": {}}, pm=bare_pm)
    assert sorted(p.name for p in (path / "policies").iterdir()) == ["solo"]
    assert read_checkpoint(path, pm=bare_pm).state == {"iteration": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_never_overwrites_a_directory_that_is_not_a_checkpoint(bare_pm, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointWriteError, match="not an amber checkpoint"):
        amber.save({"a": 1}, tmp_path / "mine", pm=bare_pm)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_saves_into_an_existing_empty_directory(bare_pm, tmp_path):
    (tmp_path / "empty").mkdir()
    amber.save({"a": 1}, tmp_path / "empty", pm=bare_pm)
    assert amber.load(tmp_path / "empty", pm=bare_pm) == {"a": 1}


def test_stale_staging_dirs_are_removed_and_nothing_else(bare_pm, tmp_path):
    stale = tmp_path / ".ck.amber-tmp-999999999-0123abcd"
    (stale / "policies").mkdir(parents=True)
    (tmp_path / ".ck.amber-tmp-999999999-0123abcd.marker").write_text("")
    orphan_marker = tmp_path / ".ck.amber-tmp-999999998-0123abcd.marker"  # its dir was committed
    orphan_marker.write_text("")
    lookalike = tmp_path / ".other.amber-tmp-999999999-0123abcd"  # no marker beside it: not ours
    lookalike.mkdir()
    user = tmp_path / "user.txt"
    user.write_text("x")
    amber.save({"a": 1}, tmp_path / "ck", pm=bare_pm)
    assert not stale.exists() and not orphan_marker.exists()
    assert lookalike.exists() and user.exists()
    assert not (tmp_path / ".ck.amber-tmp-999999999-0123abcd.marker").exists()


def test_unwritable_state_leaves_nothing_behind(bare_pm, tmp_path):
    old = amber.save({"a": 1}, tmp_path / "ck", pm=bare_pm)
    with pytest.raises(CheckpointError, match="lambda"):
        amber.save({"config": {"fn": lambda: 0}}, old, pm=bare_pm)
    assert amber.load(old, pm=bare_pm) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_pickle_keeps_shared_objects_and_cycles_around_registered_classes(bare_pm, tmp_path):
    from amber.algorithms.ppo import PPO
    from amber.state import Ref

    shared = {"algo": PPO, "n": 1}
    cycle: dict = {"algo": PPO}
    cycle["me"] = cycle
    through_tuple = ([PPO],)
    through_tuple[0].append(through_tuple)
    state = {"a": shared, "b": shared, "cycle": cycle, "tuple": through_tuple}
    got = amber.load(amber.save(state, tmp_path / "c", format="pickle", pm=bare_pm), pm=bare_pm)
    assert got["a"] is got["b"] and got["a"] == {"algo": Ref("amber.PPO"), "n": 1}
    assert got["cycle"]["me"] is got["cycle"] and got["cycle"]["algo"] == Ref("amber.PPO")
    assert got["tuple"][0][1] is got["tuple"] and got["tuple"][0][0] == Ref("amber.PPO")
    assert cycle["algo"] is PPO and cycle["me"] is cycle  # the caller's objects are untouched


def test_deep_nests_of_shared_lists_are_written_once_each(bare_pm, tmp_path):
    from amber.algorithms.ppo import PPO
    from amber.state import Ref

    nest: list = [PPO]
    for _ in range(60):
        nest = [nest, nest]  # 61 lists, 2**60 paths from the top to PPO
    loop: list = [PPO]
    loop += [loop, loop]  # a list containing itself twice: 2**256 paths 256 levels deep
    state = {"x": nest, "loop": loop}
    got = amber.load(amber.save(state, tmp_path / "c", format="pickle", pm=bare_pm), pm=bare_pm)
    assert got["loop"][1] is got["loop"][2] is got["loop"] and got["loop"][0] == Ref("amber.PPO")
    got = got["x"]
    for _ in range(60):
        assert got[0] is got[1]
        got = got[0]
    assert got == [Ref("amber.PPO")]


def test_a_portable_format_refuses_a_cycle_naming_where_it_leads(bare_pm, tmp_path):
    from amber.algorithms.ppo import PPO
    from amber.errors import UnserializableStateError

    cycle: dict = {"algo": PPO, "inner": {}}
    cycle["inner"]["back"] = cycle
    with pytest.raises(UnserializableStateError,
                       match=r"cannot write inner\.back .*contains itself \(a cycle back to \(root\)\)") as info:
        amber.save(cycle, tmp_path / "c", format="msgpack", pm=bare_pm)
    assert info.value.path == str(tmp_path / "c" / "state.msgpck")
    assert list(tmp_path.iterdir()) == []


# -- the engine names no format or exporter ---------------------------------------------

ENGINE_ROOT = Path(amber.__file__).parent
#: Format, exporter and exported-file names that must not appear in the engine's modules.
PLUGIN_NAMES = re.compile(r"onnx|keras|model\.pt2|saved_model|msgpack|pickle")
#: Generic uses of those words, allowed everywhere: the public allow_pickle family of
#: parameters, "unpickle" in safety texts, the RLlib API name convert_to_msgpack_checkpoint,
#: and the in-tree plugins' module paths (amber.plugins.*), which plugin_manager loads.
GENERIC = re.compile(
    r"allow[_-]pickle|pickle_allowed_default|unpickl\w*|convert_to_msgpack_checkpoint|amber\.plugins\.\w+")
#: Remaining lines, each with why it may name a format (exact text, so a new one fails).
JUSTIFIED = {
    # the safety docs of allow_pickle, a public parameter
    "checkpoint_read.py": ['    """Whether pickle is allowed when the caller does not say: not if ``AMBER_SAFE_LOAD`` is set."""',
                           "    :raises UnsafeContentError: pickle refused."],
    "errors.py": ['    """Content that can run code (pickle) was refused because safe loading is on."""'],
    "state.py": ["with ``arbitrary_objects`` (pickle) also hold anything else.",
                 # user-facing ways out that name Algorithm.save's default format (owners: names, state)
                 "                \"(amber.register_class), or save with format='pickle', or pass it again \"",
                 "            \"state-tree leaves; convert it to arrays/dicts, or save with format='pickle'\","],
    "names.py": ["    (pickle); for a portable one it becomes a placeholder (``placeholders``)",
                 "            \"lambda needs name=...), or save with format='pickle', or pass it again when restoring \""],
    # the RLlib API convert_to_msgpack_checkpoint, and amber migrate's format for another system's checkpoint
    "utils/checkpoints.py": [
        '    """Rewrite a checkpoint in the portable msgpack format; return ``dst``.',
        '    return convert_checkpoint(src, dst, format="msgpack", allow_pickle=allow_pickle,',
    ],
    "utils/rewriting.py": [
        "        # a lambda that pickle held cannot be written portably: the loader asks for it instead",
    ],
}


def test_the_engine_names_no_format_or_exporter():
    """``grep -nE "onnx|keras|model\\.pt2|saved_model|msgpack|pickle" core/*.py core/utils/*.py``
    finds only generic or justified text: everything about a format or an exporter comes from its plugin."""
    found = []
    for path in sorted([*ENGINE_ROOT.glob("*.py"), *(ENGINE_ROOT / "utils").glob("*.py")]):
        rel = path.relative_to(ENGINE_ROOT).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PLUGIN_NAMES.search(GENERIC.sub("", line)) and line not in JUSTIFIED.get(rel, []):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_unknown_names_hint_from_the_plugins_specs(bare_pm):
    registry = get_registry(bare_pm)
    with pytest.raises(UnknownFormatError, match=r"'onnx' is a model exporter, not a format; "
                                                 r"it needs: pip install 'amber-rl\[onnx\]'"):
        registry.get("onnx")
    with pytest.raises(UnknownFormatError, match="'torch' is a model exporter, not a format"):
        registry.get("torch")
    with pytest.raises(UnknownFormatError, match="a third-party format is installed with pip"):
        registry.get("yaml")
    from amber.errors import UnknownExporterError

    with pytest.raises(UnknownExporterError, match="'pickle' is a format, not an exporter"):
        registry.exporter("pickle")
    with pytest.raises(UnknownExporterError, match="a third-party exporter is installed with pip") as e:
        registry.exporter("tflite")
    assert "keras, onnx, torch" in str(e.value) and isinstance(e.value, KeyError)


def _needy_format(name, *, fail_on):
    """A format whose dependency is missing when it writes or reads."""
    def write(state, sink):
        if fail_on == "write":
            raise ModuleNotFoundError("No module named 'zstandard'", name="zstandard")
        with sink.open() as f:
            f.write(json.dumps(state).encode())

    def read(source):
        raise ModuleNotFoundError("No module named 'zstandard'", name="zstandard")

    spec = FormatSpec(name, ".zst", Capabilities(True, True, False), write, read, extra="zstd")

    class Plugin:
        @amber.hookimpl
        def amber_register_formats(self):
            return [spec]

    return Plugin()


@pytest.mark.parametrize("fail_on", ["write", "read"])
def test_a_formats_missing_dependency_names_its_extra(tmp_path, fail_on):
    pm = get_plugin_manager(autoload=False)
    pm.register(_needy_format("zst", fail_on=fail_on), name="zst_fmt")
    if fail_on == "write":
        with pytest.raises(MissingPluginError, match=r"zstandard.*pip install 'amber-rl\[zstd\]'"):
            amber.save({"a": 1}, tmp_path / "ck", format="zst", pm=pm)
        assert list(tmp_path.iterdir()) == []
    else:
        amber.save({"a": 1}, tmp_path / "ck", format="zst", pm=pm)
        with pytest.raises(MissingPluginError, match=r"zstandard.*pip install 'amber-rl\[zstd\]'"):
            amber.load(tmp_path / "ck", pm=pm)


def test_a_module_the_checkpoint_names_that_cannot_be_imported_is_named_as_such(bare_pm, tmp_path, monkeypatch):
    """A pickle state holding a function of a user module that is not importable where it is
    loaded was a MissingPluginError blaming the format's plugin ("install the missing package,
    or reinstall the distribution of the plugin"): it names the module and the file instead."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "amber_test_user_maps.py").write_text("def my_map(agent_id, *a, **k):\n    return 'p0'\n")
    monkeypatch.syspath_prepend(str(source))
    import amber_test_user_maps

    path = tmp_path / "ck"
    amber.save({"fn": amber_test_user_maps.my_map}, path, format="pickle", pm=bare_pm)
    monkeypatch.delitem(__import__("sys").modules, "amber_test_user_maps")
    (source / "amber_test_user_maps.py").unlink()
    with pytest.raises(UnregisteredNameError) as e:
        amber.load(path, allow_pickle=True, pm=bare_pm)
    message = str(e.value)
    assert not isinstance(e.value, MissingPluginError)
    assert "'amber_test_user_maps'" in message and "importable" in message and "state.pkl" in message
    assert "plugin" not in message and "policy_mapping_fn" not in message


def test_a_formats_own_dependency_imported_while_reading_stays_a_missing_plugin(tmp_path):
    """The same ImportError from the format's own import statement (a format that holds any
    object, importing its dependency lazily) still names the format and its extra."""
    def read(source):
        import amber_test_no_such_dependency  # noqa: F401

    def write(state, sink):
        with sink.open() as f:
            f.write(b"{}")

    spec = FormatSpec("lazy", ".lz", Capabilities(False, True, True), write, read, extra="lazy")

    class Plugin:
        @amber.hookimpl
        def amber_register_formats(self):
            return [spec]

    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin(), name="lazy_fmt")
    amber.save({"a": 1}, tmp_path / "ck", format="lazy", pm=pm)
    with pytest.raises(MissingPluginError, match=r"amber_test_no_such_dependency.*amber-rl\[lazy\]"):
        amber.load(tmp_path / "ck", pm=pm)


# -- what a save refuses before anything is committed --------------------------------------------


def _format_pm(name: str, write) -> pluggy.PluginManager:
    """A plugin manager holding the in-tree formats and one whose ``write`` is given."""
    spec = FormatSpec(name, ".t", Capabilities(True, True, False), write, lambda source: {})

    class Plugin:
        @amber.hookimpl
        def amber_register_formats(self):
            return [spec]

    pm = get_plugin_manager(autoload=False)
    pm.register(Plugin(), name=f"{name}_fmt")
    return pm


@pytest.mark.parametrize("metadata", [{"score": 0.5}, {"step": None}, {1: "a"}, "abc"],
                         ids=["float", "none", "int-key", "str"])
def test_metadata_that_is_not_str_to_str_is_refused_before_the_previous_checkpoint_is_touched(
        tmp_path, metadata):
    """A checkpoint.json holds string metadata, and a reader refuses any other: the save went
    through (or failed with a raw TypeError) and replaced a good checkpoint with one that never loads."""
    path = amber.save({"w": np.arange(3.0)}, tmp_path / "ck", format="msgpack")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    for block in (True, False):
        with pytest.raises(TypeError, match="metadata"):
            amber.save({"w": np.zeros(3)}, path, format="msgpack", metadata=metadata, block=block)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_metadata_too_large_for_a_manifest_fails_the_save_naming_it(tmp_path):
    path = amber.save({"w": np.arange(3.0)}, tmp_path / "ck", format="msgpack")
    with pytest.raises(CheckpointWriteError, match=f"{re.escape(str(path))}: its checkpoint.json would be"):
        amber.save({"w": np.zeros(3)}, path, format="msgpack", metadata={"notes": "x" * (17 << 20)})
    assert amber.load(path)["w"].tolist() == [0.0, 1.0, 2.0]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"], "no staging directory is left behind"


def test_any_failure_of_a_formats_write_names_the_checkpoint_and_commits_nothing(tmp_path):
    def write(state, sink):
        with sink.open() as f:
            f.write(b"half")
        raise RuntimeError("the encoder broke")

    pm = _format_pm("broken", write)
    path = amber.save({"a": 1}, tmp_path / "ck", format="msgpack", pm=pm)
    with pytest.raises(UnserializableStateError, match=r"cannot write .*ck in format 'broken': RuntimeError: "
                                                        "the encoder broke") as e:
        amber.save({"a": 2}, path, format="broken", pm=pm)
    assert e.value.path is not None and Path(e.value.path) == path
    assert amber.load(path, pm=pm) == {"a": 1}


def test_a_format_that_writes_no_state_file_fails_the_save(tmp_path):
    """Writing only a side file (or nothing) committed a checkpoint every reader refuses."""
    def write(state, sink):
        with sink.open(".side") as f:
            f.write(b"{}")

    pm = _format_pm("sideonly", write)
    path = amber.save({"a": 1}, tmp_path / "ck", format="msgpack", pm=pm)
    with pytest.raises(CheckpointWriteError, match=r"format 'sideonly' wrote no state\.t"):
        amber.save({"a": 2}, path, format="sideonly", pm=pm)
    assert amber.load(path, pm=pm) == {"a": 1}


def test_a_pickle_checkpoint_labelled_older_than_2_2_has_the_digests_that_version_reads(tmp_path):
    """An amber that reads up to 2.1 knows sha256, not BLAKE3 (format.md): migrate --to 2.1 wrote
    BLAKE3 digests under the 2.1 label."""
    src = Path(__file__).parent / "fixtures" / "checkpoints" / "1.0" / "state_pickle"
    amber.migrate(src, tmp_path / "old", to="2.1", allow_pickle=True)
    raw = json.loads((tmp_path / "old" / "checkpoint.json").read_text())
    assert raw["checkpoint_version"] == "2.1"
    assert {entry["digest"].split(":")[0] for entry in raw["files"].values()} == {"sha256"}
    assert verify(tmp_path / "old").ok
