"""Faults an exploratory tester found in serving and exporting, each pinned by a test.

An export directory that mixed two models, ``file://`` URLs, edited or linked
``model.json`` files, exports into checkpoints, concurrent exports, a user's
directory under a model file's name, observations of the right size but the
wrong shape, RLlib's extra arguments, and the docs' numpy-only recipe with an
infinite bound.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gym = pytest.importorskip("gymnasium")

import amber  # noqa: E402
from amber.errors import CheckpointError, CorruptCheckpointError, ExportError  # noqa: E402
from amber.export import export_model  # noqa: E402
from amber.plugin_manager import get_plugin_manager  # noqa: E402
from amber.policy.policy import Policy  # noqa: E402
from amber.policy.torch_policy import TorchPolicy  # noqa: E402
from amber.serve import PolicyChoiceError, load_policy  # noqa: E402

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra is not installed")
DOCS = Path(__file__).resolve().parent.parent / "docs"
FORBIDDEN = ("torch", "tensorflow", "gymnasium", "cloudpickle", "keras")


def faults_mapping(agent_id, episode, worker, **kw):
    """Agent i → policy ``p{i}``."""
    return f"p{agent_id}"


amber.register_class(faults_mapping, name="tests.serving_faults.mapping")


def cart_policy(seed: int = 0) -> TorchPolicy:
    """A tiny PPO policy: Box(4) observations, Discrete(2) actions."""
    return TorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                       {"model": {"fcnet_hiddens": [8]}, "seed": seed})


def box_policy(low: float = -2.0, high: float = 2.0, seed: int = 1) -> TorchPolicy:
    """A tiny PPO policy: Box(3) observations, Box(1) actions in [low, high]."""
    return TorchPolicy(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(low, high, (1,), np.float32),
                       {"model": {"fcnet_hiddens": [8]}, "seed": seed})


@pytest.fixture(scope="module")
def multi_ckpt(tmp_path_factory):
    """A two-policy (p0, p1) PPO algorithm checkpoint, msgpack."""
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).debugging(seed=0)
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=faults_mapping)
            .training(model={"fcnet_hiddens": [8]}).build())
    path = Path(algo.save(tmp_path_factory.mktemp("faults") / "ma", format="msgpack").checkpoint.path)
    algo.stop()
    return path


# --------------------------------------------------------------------------
# 1. one directory never serves a stale model under another policy's id
# --------------------------------------------------------------------------


@needs_onnx
def test_exporting_several_policies_removes_the_model_of_an_earlier_single_export(multi_ckpt, tmp_path, pm):
    from click.testing import CliRunner

    from amber.cli import CliState, cli

    out = tmp_path / "out"
    box_policy().export_model(out, onnx=17, policy_id="default_policy")
    (out / "notes.txt").write_text("the user's")
    result = CliRunner().invoke(cli, ["export", str(multi_ckpt), str(out), "--onnx", "17"],
                                obj=CliState(plugin_manager=pm))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["notes.txt", "p0", "p1"]
    served = load_policy(out, policy_id="p1")
    assert served.source == out / "p1" and served.action_space["type"] == "Discrete"


@needs_onnx
def test_a_directory_mixing_two_exports_is_refused_for_the_folders_id(tmp_path):
    out = tmp_path / "out"
    box_policy().export_model(out, onnx=17, policy_id="solo")
    cart_policy().export_model(out / "p1", onnx=17, policy_id="p1")
    with pytest.raises(PolicyChoiceError, match="mixes two exports") as info:
        load_policy(out, "p1")
    assert info.value.path == str(out)
    assert load_policy(out).policy_id == "solo"
    assert load_policy(out, "solo").action_space["type"] == "Box"
    assert load_policy(out, "a-label").policy_id == "a-label"  # a label, where no folder has that id
    assert load_policy(out / "p1").action_space["type"] == "Discrete"


# --------------------------------------------------------------------------
# 3. file:// URLs
# --------------------------------------------------------------------------


@needs_onnx
def test_file_urls_load_everywhere(multi_ckpt, tmp_path):
    from amber.algorithms.algorithm import Algorithm
    from amber.utils.checkpoints import get_checkpoint_info, verify

    policy = cart_policy()
    ckpt = Path(policy.export_checkpoint(tmp_path / "ckpt", format="msgpack"))
    policy.export_model(tmp_path / "onnx", onnx=17)
    url = f"file://{ckpt}"
    assert load_policy(url).source == ckpt
    assert load_policy(f"file://{tmp_path / 'onnx'}").source == tmp_path / "onnx"
    assert isinstance(Policy.from_checkpoint(url), TorchPolicy)
    assert get_checkpoint_info(url)["type"] == "Policy"
    assert verify(url).problems == []
    algo = Algorithm.from_checkpoint(f"file://{multi_ckpt}")
    assert sorted(algo.policies) == ["p0", "p1"]
    algo.stop()
    amber.save({"x": np.arange(3)}, tmp_path / "state", format="msgpack")
    np.testing.assert_array_equal(amber.load(f"file://{tmp_path / 'state'}")["x"], np.arange(3))
    export_model(policy.export_graph(), f"file://{tmp_path / 'via-url'}", format="onnx")
    assert sorted(os.listdir(tmp_path / "via-url")) == ["model.json", "model.onnx"]


# --------------------------------------------------------------------------
# 4. an edited model.json is a CheckpointError naming it
# --------------------------------------------------------------------------

EDITS = {
    "producer a string": lambda m: m.__setitem__("producer", "amber"),
    "observation_space a list": lambda m: m.__setitem__("observation_space", []),
    "action_space a list": lambda m: m.__setitem__("action_space", [2]),
    "input a string": lambda m: m.__setitem__("input", "obs"),
    "squashed_gaussian over Discrete": lambda m: m.__setitem__("action_distribution", "squashed_gaussian"),
    "diag_gaussian over Discrete": lambda m: m.__setitem__("action_distribution", "diag_gaussian"),
    "categorical over Box": lambda m: m.__setitem__("action_space", {"type": "Box", "shape": [2], "low": -1,
                                                                      "high": 1, "dtype": "float32"}),
}


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    if not HAVE_ONNX:
        pytest.skip("the onnx extra is not installed")
    out = tmp_path_factory.mktemp("onnx") / "export"
    cart_policy().export_model(out, onnx=17)
    return out


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_model_json_is_a_checkpoint_error_naming_it(onnx_export, tmp_path, edit):
    d = Path(shutil.copytree(onnx_export, tmp_path / "edited"))
    meta = json.loads((d / "model.json").read_text())
    EDITS[edit](meta)
    (d / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as info:
        load_policy(d)
    assert str(d) in str(info.value.path)


# --------------------------------------------------------------------------
# 5. export_model never writes into a checkpoint
# --------------------------------------------------------------------------


def test_export_model_refuses_a_checkpoint_and_a_folder_inside_one(tmp_path):
    from amber.utils.checkpoints import verify

    policy = TorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                         {"model": {"fcnet_hiddens": [8]}, "seed": 0, "export_native_model_files": True})
    ckpt = Path(policy.export_checkpoint(tmp_path / "ckpt", format="msgpack"))
    assert sorted(os.listdir(ckpt / "model")) == ["model.json", "model.pt2"]  # the save's own folder
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    for target in (ckpt, ckpt / "model", ckpt / "new"):
        with pytest.raises(ExportError, match="checkpoint"):
            policy.export_model(target)
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before
    assert verify(ckpt).problems == []


# --------------------------------------------------------------------------
# 6. two exports into one directory at once
# --------------------------------------------------------------------------


class _Slow:
    """Two exporters writing one file each: ``slow`` (model.slow) waits for ``release``."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def _slow(self, graph, directory, options):
        (directory / "model.slow").write_text("slow")
        self.entered.set()
        assert self.release.wait(60)
        return [directory / "model.slow"]

    @staticmethod
    def _fast(graph, directory, options):
        (directory / "model.fast").write_text("fast")
        return [directory / "model.fast"]

    def amber_register_exporters(self):
        from amber.registry import ExportedFile, ExporterSpec

        return [ExporterSpec(name=name, export=fn, files=(ExportedFile(f"model.{name}", "open()"),))
                for name, fn in (("slow", self._slow), ("fast", self._fast))]


def test_concurrent_exports_into_one_directory_never_mix(tmp_path):
    plugin = _Slow()
    amber.hookimpl(plugin.amber_register_exporters.__func__)
    pm = get_plugin_manager(autoload=False)
    pm.register(plugin, name="slow_exporters")
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def run(graph, fmt):
        try:
            export_model(graph, out, format=fmt, pm=pm)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    first = threading.Thread(target=run, args=(cart_policy(0).export_graph(), "slow"))
    second = threading.Thread(target=run, args=(cart_policy(1).export_graph(), "fast"))
    first.start()
    assert plugin.entered.wait(60)
    second.start()
    second.join(1.0)  # it waits for the first export's lock
    plugin.release.set()
    first.join(60)
    second.join(60)
    assert errors == []
    meta = json.loads((out / "model.json").read_text())
    assert sorted(os.listdir(out)) == sorted(["model.json", *meta["files"]])
    assert list(meta["files"]) == ["model.fast"]  # the second replaced the first whole


# --------------------------------------------------------------------------
# 7. a user's directory under a model file's name is never deleted
# --------------------------------------------------------------------------


@needs_onnx
def test_a_directory_no_export_wrote_is_refused_not_deleted(tmp_path):
    policy = cart_policy()
    for name, kwargs in (("model.onnx", {"onnx": 17}), ("model.pt2", {})):
        out = tmp_path / name.replace(".", "-")
        (out / name).mkdir(parents=True)
        (out / name / "precious.txt").write_text("user data")
        with pytest.raises(ExportError, match="directory") as info:
            policy.export_model(out, **kwargs)
        assert info.value.path == str(out / name)
        assert (out / name / "precious.txt").read_text() == "user data"
        assert sorted(os.listdir(out)) == [name]
    # an earlier export's stale model file, now a user's directory: refused too
    out = tmp_path / "stale"
    policy.export_model(out, onnx=17)
    (out / "model.onnx").unlink()
    (out / "model.onnx").mkdir()
    (out / "model.onnx" / "precious.txt").write_text("user data")
    with pytest.raises(ExportError, match="directory"):
        cart_policy(5).export_model(out)
    assert (out / "model.onnx" / "precious.txt").exists()


def test_a_listed_directory_holding_other_files_is_refused(tmp_path):
    from amber.export_dir import check_replaceable

    (tmp_path / "saved_model" / "variables").mkdir(parents=True)
    (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"x")
    previous = {"files": {"saved_model": {"contents": {"saved_model.pb": {"size": 1, "digest": "d"}}}}}
    check_replaceable(tmp_path, ["saved_model"], previous)  # what the earlier export wrote
    (tmp_path / "saved_model" / "variables" / "mine.txt").write_text("user data")
    with pytest.raises(ExportError, match="variables/mine.txt"):
        check_replaceable(tmp_path, ["saved_model"], previous)
    with pytest.raises(ExportError, match="directory"):  # listed as a file
        check_replaceable(tmp_path, ["saved_model"], {"files": {"saved_model": {"size": 1}}})


# --------------------------------------------------------------------------
# 8. observations of the right size and the wrong shape
# --------------------------------------------------------------------------


def test_observations_of_the_wrong_shape_and_the_right_size_are_refused(tmp_path):
    policy = TorchPolicy(gym.spaces.Box(-1, 1, (2, 3), np.float32), gym.spaces.Discrete(2),
                         {"model": {"fcnet_hiddens": [8]}, "seed": 0})
    served = load_policy(policy.export_checkpoint(tmp_path / "ckpt", format="msgpack"))
    for p in (policy, served):
        for single in ((3, 2), (6,), (1, 2, 3)):
            with pytest.raises(ValueError, match="shape"):
                p.compute_single_action(np.zeros(single, np.float32), explore=False)
        for batch in ((4, 3, 2), (4, 6), (24,)):
            with pytest.raises(ValueError, match="shape"):
                p.compute_actions(np.zeros(batch, np.float32), explore=False)
        assert p.compute_actions(np.zeros((4, 2, 3), np.float32), explore=False)[0].shape == (4,)
        assert p.compute_actions(np.zeros((0, 2, 3), np.float32), explore=False)[0].shape == (0,)
        assert p.compute_single_action([[0.0] * 3] * 2, explore=False)[0] in (0, 1)  # lists, as in RLlib
    flat = cart_policy()
    served = load_policy(flat.export_checkpoint(tmp_path / "flat", format="msgpack"))
    for p in (flat, served):  # flat Box observations, one and a batch
        assert p.compute_single_action([0.1, 0.2, 0.3, 0.4], explore=False)[0] in (0, 1)
        assert p.compute_actions([[0.1, 0.2, 0.3, 0.4]] * 3, explore=False)[0].shape == (3,)
        with pytest.raises(ValueError, match="shape"):
            p.compute_actions(np.zeros((2, 2, 2), np.float32), explore=False)


# --------------------------------------------------------------------------
# 9. RLlib's other arguments
# --------------------------------------------------------------------------


def test_the_served_policy_accepts_rllibs_other_arguments(tmp_path):
    policy = cart_policy()
    served = load_policy(policy.export_checkpoint(tmp_path / "ckpt", format="msgpack"))
    obs = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    kw = {"prev_action": 0, "prev_reward": 0.0, "info": {}, "episode": None, "timestep": 7, "input_dict": None}
    assert served.compute_single_action(obs, explore=False, **kw)[0] == \
        policy.compute_single_action(obs, explore=False, **kw)[0]
    batch_kw = {"prev_action_batch": [0, 1], "prev_reward_batch": [0.0, 1.0], "info_batch": [{}, {}],
                "episodes": None, "timestep": 3}
    actions = served.compute_actions(np.stack([obs, -obs]), None, explore=False, **batch_kw)[0]
    np.testing.assert_array_equal(actions, policy.compute_actions(np.stack([obs, -obs]), None, explore=False,
                                                                  **batch_kw)[0])


# --------------------------------------------------------------------------
# 10. links in an export
# --------------------------------------------------------------------------


@needs_onnx
def test_a_linked_model_json_or_policy_folder_is_refused(onnx_export, tmp_path):
    linked = Path(shutil.copytree(onnx_export, tmp_path / "linked"))
    os.replace(linked / "model.json", tmp_path / "elsewhere.json")
    os.symlink(tmp_path / "elsewhere.json", linked / "model.json")
    with pytest.raises(CorruptCheckpointError, match="symbolic link"):
        load_policy(linked)
    several = tmp_path / "several"
    shutil.copytree(onnx_export, several / "p0")
    os.symlink(onnx_export, several / "p1")
    assert load_policy(several, "p0").policy_id == "p0"
    with pytest.raises(CorruptCheckpointError, match="symbolic link") as info:
        load_policy(several, "p1")
    assert info.value.path == str(several / "p1")


@needs_onnx
def test_a_fifo_model_json_is_refused_without_waiting(onnx_export, tmp_path):
    fifo = Path(shutil.copytree(onnx_export, tmp_path / "fifo"))
    (fifo / "model.json").unlink()
    os.mkfifo(fifo / "model.json")
    outcome: list[BaseException | object] = []
    reader = threading.Thread(target=lambda: outcome.append(_try(load_policy, fifo)), daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # unblock the reader, then fail
        with open(fifo / "model.json", "wb"):
            pass
        pytest.fail("load_policy waited on a FIFO model.json")
    assert isinstance(outcome[0], CorruptCheckpointError) and "FIFO" in str(outcome[0])


def _try(fn, *args):
    try:
        return fn(*args)
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e


# --------------------------------------------------------------------------
# 11. the docs' numpy-only recipe, with an infinite bound
# --------------------------------------------------------------------------


@needs_onnx
def test_the_docs_numpy_recipe_acts_with_an_infinite_bound(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / "export.md").read_text(), re.M | re.S)
    recipe = next(b for b in blocks if "ort.InferenceSession" in b)
    out = tmp_path / "inf"
    box_policy(-np.inf, np.inf).export_model(out, onnx=17)
    assert json.loads((out / "model.json").read_text())["act"]["high"] == ["Infinity"]
    namespace: dict = {}
    exec(compile(recipe.replace("/tmp/my_nn_model", str(out)), "export.md", "exec"), namespace)  # noqa: S102
    assert namespace["actions"].shape == (2, 1) and np.isfinite(namespace["actions"]).all()


# --------------------------------------------------------------------------
# serving stays free of torch, tensorflow, gymnasium and cloudpickle
# --------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from amber.serve import load_policy

    out = [load_policy(path, pid).compute_single_action([0.0, 0.0, 0.0, 0.0])[0] for path, pid in json.loads(sys.argv[1])]
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in set(sys.argv[2].split(",")))
    print(json.dumps({"actions": out, "forbidden": forbidden}))
""")


@needs_onnx
def test_serving_these_imports_no_torch_tensorflow_gymnasium_or_cloudpickle(multi_ckpt, tmp_path):
    ckpt = Path(cart_policy().export_checkpoint(tmp_path / "ckpt", format="msgpack"))
    mixed = tmp_path / "mixed"
    cart_policy(2).export_model(mixed, onnx=17, policy_id="solo")
    cart_policy(3).export_model(mixed / "p1", onnx=17)
    paths = [[f"file://{ckpt}", None], [f"file://{multi_ckpt}", "p1"], [str(mixed), None],
             [str(mixed / "p1"), None], [f"file://{mixed}", "solo"]]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths), ",".join(FORBIDDEN)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == [] and len(report["actions"]) == len(paths)
