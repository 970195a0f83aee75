"""Exported models load in a fresh process with their runtime alone and compute what the policy does.

Every case (PPO policies over each kind of space, DQN and SAC policies, and
synthetic graphs of every output kind) is exported all three ways once; then
one fresh Python per runtime (torch, onnxruntime, tensorflow with keras)
loads every export, asserts that neither amber nor gymnasium was imported,
and runs random observation batches of 1, 7 and 64. The parent compares.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from amber import hookimpl as amber_hookimpl
from amber.errors import DuplicateFormatError, MissingPluginError, UnknownExporterError
from amber.export import (
    Dense,
    ExportError,
    ModelGraph,
    Output,
    Preprocess,
    action_rule,
    export_model,
    greedy_action,
    weights_digest,
)
from amber.plugin_manager import get_plugin_manager
from amber.policy.torch_policy import TorchPolicy, action_info
from amber.registry import ExportedFile, ExporterSpec

# keras's tensorflow backend calls np.array(x) on tensors that lack numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

BATCHES = (1, 7, 64)
#: Exported outputs agree with the policy's own model within this (float32).
TOL = 1e-5

# --------------------------------------------------------------------------
# the runtime-only process
# --------------------------------------------------------------------------

RUNNER = textwrap.dedent('''
    """Load exported models with one runtime and run observation batches; amber is never imported."""
    import json
    import sys

    import numpy as np

    plans, out_path = json.load(open(sys.argv[1])), sys.argv[2]
    results = {}

    def run_all(runtime, load, call):
        for case in plans[runtime]:
            model = load(case["path"])
            obs_all = np.load(case["obs"])
            for key in obs_all.files:
                out = call(model, obs_all[key].astype(np.float32))
                for name, value in out.items():
                    results[f"{runtime}|{case['id']}|{key}|{name}"] = np.asarray(value)

    if "torch" in plans:
        import torch

        torch.set_num_threads(1)
        run_all("torch", lambda p: torch.export.load(p).module(),
                lambda m, obs: {k: v.numpy() for k, v in m(torch.from_numpy(obs)).items()})
    if "onnxruntime" in plans:
        import onnxruntime as ort

        def load(p):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            return ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])

        def call(sess, obs):
            assert [i.name for i in sess.get_inputs()] == ["obs"], sess.get_inputs()
            names = [o.name for o in sess.get_outputs()]
            return dict(zip(names, sess.run(None, {"obs": obs})))

        run_all("onnxruntime", load, call)
    if "tensorflow" in plans:
        import tensorflow as tf

        def call_saved(m, obs):
            fn = m.signatures["serving_default"]
            return {k: v.numpy() for k, v in fn(obs=tf.constant(obs)).items()}

        run_all("tensorflow", tf.saved_model.load, call_saved)
    if "keras" in plans:
        import keras

        run_all("keras", lambda p: keras.saving.load_model(p),
                lambda m, obs: {k: np.asarray(v) for k, v in m(obs).items()})
    np.savez(out_path, **results)
    print(json.dumps({name: name in sys.modules
                      for name in ("amber", "gymnasium", "torch", "onnxruntime", "tensorflow")}))
''')

#: runtime → (module that must be importable, the file or folder it loads, its process).
RUNTIMES = {
    "torch": ("torch", "model.pt2", "torch"),
    "onnxruntime": ("onnxruntime", "model.onnx", "onnxruntime"),
    "tensorflow": ("tensorflow", "saved_model", "tensorflow"),
    "keras": ("keras", "model.keras", "tensorflow"),
}
#: What each runtime's process may import besides numpy.
ALLOWED = {"torch": {"torch"}, "onnxruntime": {"onnxruntime"}, "tensorflow": {"tensorflow"}}


def runtime_available(runtime: str) -> bool:
    import importlib.util

    needs = {"torch": ["torch"], "onnxruntime": ["onnx", "onnxruntime"],
             "tensorflow": ["tensorflow", "keras"], "keras": ["tensorflow", "keras"]}[runtime]
    return all(importlib.util.find_spec(m) is not None for m in needs)


def run_runtimes(runtimes: list[str], plans: dict[str, list[dict]], tmp: Path) -> dict:
    """One fresh interpreter per runtime process; outputs by key and each process's sys.modules report."""
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "AMBER"))}
    env.update(KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    results: dict[str, np.ndarray] = {}
    reports = {}
    procs = {}
    for process in dict.fromkeys(RUNTIMES[r][2] for r in runtimes):  # the processes run side by side
        mine = {r: plans[r] for r in runtimes if RUNTIMES[r][2] == process}
        plan = tmp / f"plan-{process}.json"
        plan.write_text(json.dumps(mine))
        # -I: isolated (no cwd, no PYTHONPATH, no user site), so only installed packages import.
        procs[process] = subprocess.Popen(
            [sys.executable, "-I", str(script), str(plan), str(tmp / f"out-{process}.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp, env=env)
    for process, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-4000:]
        reports[process] = json.loads(stdout.strip().splitlines()[-1])
        with np.load(tmp / f"out-{process}.npz") as data:
            results.update({k: data[k] for k in data.files})
    return {"results": results, "reports": reports}


# --------------------------------------------------------------------------
# the cases
# --------------------------------------------------------------------------


def scale_weights(policy, factor: float, seed: int) -> None:
    """Random weights of a useful size, so greedy actions are not near-ties of 0.01-scale logits."""
    rng = np.random.default_rng(seed)
    weights = {k: (rng.standard_normal(v.shape) * factor / np.sqrt(v.shape[-1])).astype(np.float32)
               if np.ndim(v) else v for k, v in policy.get_weights().items()}
    policy.set_weights(weights)


def ppo_policy(obs_space, act_space, *, activation="tanh", seed=0):
    policy = TorchPolicy(obs_space, act_space, {"model": {"fcnet_hiddens": [32, 16], "fcnet_activation": activation},
                                                "lr": 1e-3, "seed": seed})
    scale_weights(policy, 2.0, seed)
    return policy


def dqn_policy():
    from amber.algorithms.dqn import DQNConfig

    algo = (DQNConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [32, 32]}, dueling=True)
            .debugging(seed=3).build())
    policy = algo.get_policy()
    scale_weights(policy, 2.0, 3)
    algo.stop()
    return policy


def sac_policy():
    from amber.algorithms.sac import SACConfig

    algo = (SACConfig().environment("Pendulum-v1").training(model={"fcnet_hiddens": [32, 32]})
            .debugging(seed=4).build())
    policy = algo.get_policy()
    scale_weights(policy, 2.0, 4)
    algo.stop()
    return policy


def dense(rng, n_in, n_out, activation=None, scale=1.0):
    return Dense((rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(np.float32),
                 (rng.standard_normal(n_out) * 0.1).astype(np.float32), activation)


def dueling_graph() -> ModelGraph:
    """Q-values of a dueling head over one-hot observations (Discrete(6, start=-2))."""
    rng = np.random.default_rng(11)
    obs_space, act_space = gym.spaces.Discrete(6, start=-2), gym.spaces.Discrete(4, start=1)
    towers = {"v": [dense(rng, 6, 16, "relu"), dense(rng, 16, 1)],
              "a": [dense(rng, 6, 16, "relu"), dense(rng, 16, 4)]}
    return ModelGraph((), Preprocess("one_hot", 6, -2), towers,
                      [Output("action_dist_inputs", "dueling", ("v", "a"))],
                      action_info(obs_space, act_space, q_values=True), framework="torch")


def squashed_graph() -> ModelGraph:
    """A SAC-style actor over 2x3 observations: mean and a log_std that the clip really cuts."""
    rng = np.random.default_rng(12)
    obs_space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)
    act_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    towers = {"pi": [dense(rng, 6, 16, "tanh"), dense(rng, 16, 4, scale=8.0)]}
    return ModelGraph((2, 3), Preprocess("flatten", 6), towers,
                      [Output("action_dist_inputs", "clip_log_std", ("pi",), {"low": -1.0, "high": 0.5})],
                      action_info(obs_space, act_space, squashed=True), framework="torch")


CASES = {
    # PPO over each kind of space
    "ppo-box-discrete": lambda: ppo_policy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2)),
    "ppo-box2d-discrete-start": lambda: ppo_policy(gym.spaces.Box(-5, 5, (2, 3), np.float32),
                                                   gym.spaces.Discrete(3, start=1), activation="relu", seed=1),
    "ppo-box-box": lambda: ppo_policy(gym.spaces.Box(-1, 1, (3,), np.float32),
                                      gym.spaces.Box(np.array([-2.0, -0.5], np.float32),
                                                     np.array([2.0, 0.5], np.float32)), seed=2),
    "ppo-discrete-discrete": lambda: ppo_policy(gym.spaces.Discrete(5, start=-1), gym.spaces.Discrete(3), seed=5),
    # the other algorithms' policies
    "dqn": dqn_policy,
    "sac": sac_policy,
    # synthetic graphs of the remaining output kinds
    "graph-dueling": dueling_graph,
    "graph-clip-log-std": squashed_graph,
}
#: Extra ONNX opsets, exported for the synthetic graphs (ReduceMean and Squeeze changed across them).
OPSETS = (11, 13, 18)


def in_space(policy, obs: np.ndarray) -> np.ndarray:
    """Which rows of ``obs`` the policy's observation space holds (the batches also hold one-hot
    values just outside it: exported graphs encode those to zeros, a policy refuses them)."""
    space = policy.observation_space
    if not isinstance(space, gym.spaces.Discrete):
        return np.ones(len(obs), bool)
    return (obs >= space.start) & (obs < space.start + space.n)


def observations(graph: ModelGraph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for n in BATCHES:
        if graph.preprocess.kind == "one_hot":
            lo = graph.preprocess.start
            out[f"b{n}"] = rng.integers(lo - 1, lo + graph.preprocess.size + 1, size=n).astype(np.float32)
        else:
            out[f"b{n}"] = rng.uniform(-3, 3, size=(n, *graph.obs_shape)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every case exported every available way, and every runtime's outputs on them."""
    tmp = tmp_path_factory.mktemp("exports")
    cases, skipped = {}, {}
    for cid, make in CASES.items():
        try:
            obj = make()
        except ImportError as e:  # DQN / SAC not in this build
            skipped[cid] = str(e)
            continue
        graph = obj if isinstance(obj, ModelGraph) else obj.export_graph()
        policy = None if isinstance(obj, ModelGraph) else obj
        d = tmp / cid
        obs = observations(graph, seed=len(cases))
        np.savez(tmp / f"{cid}-obs.npz", **obs)
        cases[cid] = {"graph": graph, "policy": policy, "dir": d, "obs": obs}

    runtimes = [r for r in RUNTIMES if runtime_available(r)]
    plans: dict[str, list[dict]] = {r: [] for r in runtimes}
    for cid, case in cases.items():
        export = case["policy"].export_model if case["policy"] is not None else (
            lambda d, onnx=None, format=None, g=case["graph"]: export_model(g, d, onnx=onnx, format=format))
        export(case["dir"])
        if "onnxruntime" in runtimes:
            export(case["dir"], onnx=17)
        if "tensorflow" in runtimes:
            export(case["dir"], format="keras")
        for r in runtimes:
            plans[r].append({"id": cid, "path": str(case["dir"] / RUNTIMES[r][1]),
                             "obs": str(tmp / f"{cid}-obs.npz")})
        if "onnxruntime" in runtimes and case["policy"] is None:
            for opset in OPSETS:
                d = tmp / f"{cid}-opset{opset}"
                export(d, onnx=opset)
                plans["onnxruntime"].append({"id": f"{cid}-opset{opset}", "path": str(d / "model.onnx"),
                                             "obs": str(tmp / f"{cid}-obs.npz")})
    ran = run_runtimes(runtimes, plans, tmp)
    return {"cases": cases, "skipped": skipped, "runtimes": runtimes, **ran}


def get_case(exported, cid):
    if cid in exported["skipped"]:
        pytest.skip(f"{cid}: {exported['skipped'][cid]}")
    return exported["cases"][cid]


def need_runtime(exported, runtime):
    if runtime not in exported["runtimes"]:
        pytest.skip(f"{RUNTIMES[runtime][0]} is not installed (pip install 'amber-rl[onnx,keras]')")


def runtime_outputs(exported, runtime, result_id, batch, names):
    res = exported["results"]
    return {name: res[f"{runtime}|{result_id}|b{batch}|{name}"] for name in names}


# --------------------------------------------------------------------------
# outputs and actions
# --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("cid", list(CASES))
def test_exported_outputs_match_the_policy(exported, cid, runtime):
    case = get_case(exported, cid)
    need_runtime(exported, runtime)
    graph, policy = case["graph"], case["policy"]
    for n in BATCHES:
        obs = case["obs"][f"b{n}"]
        got = runtime_outputs(exported, runtime, cid, n, graph.output_names)
        reference = graph.forward_numpy(obs)
        held = in_space(policy, obs) if policy is not None else None
        own = policy.compute_actions(obs[held], explore=False)[2] if policy is not None else {}
        if policy is not None:
            assert "action_dist_inputs" in own
        for name in graph.output_names:
            assert got[name].dtype == np.float32
            assert got[name].shape == reference[name].shape, (name, n)
            np.testing.assert_allclose(got[name], reference[name], rtol=TOL, atol=TOL, err_msg=f"{name} b{n}")
            if name in own:
                np.testing.assert_allclose(got[name][held], own[name], rtol=TOL, atol=TOL, err_msg=f"{name} b{n}")


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("cid", [c for c in CASES if not c.startswith("graph-")])
def test_greedy_action_from_the_exported_outputs(exported, cid, runtime):
    case = get_case(exported, cid)
    need_runtime(exported, runtime)
    policy = case["policy"]
    rule = json.loads((case["dir"] / "model.json").read_text())["act"]
    obs = case["obs"]["b7"]
    got = greedy_action(rule, runtime_outputs(exported, runtime, cid, 7, case["graph"].output_names))
    for i in np.flatnonzero(in_space(policy, obs)):
        action = policy.compute_single_action(obs[i], explore=False)[0]
        if rule["op"] == "argmax":
            assert int(got[i]) == action
        else:  # Box: the policy's action, put in bounds as the env would
            want = np.clip(np.asarray(action, np.float64), policy.action_space.low, policy.action_space.high)
            assert got[i].shape == policy.action_space.shape
            np.testing.assert_allclose(got[i], want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("cid", ["graph-dueling", "graph-clip-log-std"])
def test_onnx_opsets(exported, cid, opset):
    case = get_case(exported, cid)
    need_runtime(exported, "onnxruntime")
    for n in BATCHES:
        got = runtime_outputs(exported, "onnxruntime", f"{cid}-opset{opset}", n, case["graph"].output_names)
        for name, want in case["graph"].forward_numpy(case["obs"][f"b{n}"]).items():
            np.testing.assert_allclose(got[name], want, rtol=TOL, atol=TOL)


def test_the_clip_really_cuts_in_the_synthetic_actor(exported):
    """The clip_log_std case exercises the clip: some log_std values are beyond its bounds."""
    graph = get_case(exported, "graph-clip-log-std")["graph"]
    obs = exported["cases"]["graph-clip-log-std"]["obs"]["b64"]
    raw = np.tanh(graph.features(obs) @ graph.towers["pi"][0].weight.T + graph.towers["pi"][0].bias)
    raw = raw @ graph.towers["pi"][1].weight.T + graph.towers["pi"][1].bias
    assert (raw[:, 2:] < -1.0).any() and (raw[:, 2:] > 0.5).any()


@pytest.mark.parametrize("process", ["torch", "onnxruntime", "tensorflow"])
def test_runtime_processes_import_neither_amber_nor_gymnasium(exported, process):
    if process not in exported["reports"]:
        pytest.skip(f"{process} is not installed")
    report = exported["reports"][process]
    assert report["amber"] is False and report["gymnasium"] is False, report
    assert report[process] is True, report
    others = {"torch", "onnxruntime", "tensorflow"} - ALLOWED[process]
    assert not any(report[m] for m in others), report


# --------------------------------------------------------------------------
# model.json
# --------------------------------------------------------------------------


def test_model_json_describes_the_export(exported):
    case = get_case(exported, "ppo-box-box")
    meta = json.loads((case["dir"] / "model.json").read_text())
    assert meta["producer"]["name"] == "amber"
    assert meta["output_names"] == ["action_dist_inputs", "vf_preds"]
    assert meta["input"] == {"name": "obs", "dtype": "float32", "shape": ["batch", 3]}
    assert meta["weights_digest"] == weights_digest(case["graph"])
    assert "policy_id" not in meta  # export_model(dir) of a policy that was given no id
    expected = {"model.pt2"} | ({"model.onnx"} if "onnxruntime" in exported["runtimes"] else set()) | (
        {"saved_model", "model.keras"} if "tensorflow" in exported["runtimes"] else set())
    assert set(meta["files"]) == expected
    assert sorted(os.listdir(case["dir"])) == sorted(expected | {"model.json"})  # no staging left
    if "model.onnx" in expected:
        assert meta["files"]["model.onnx"]["opset"] == 17
    assert meta["act"] == {"op": "clip", "output": "action_dist_inputs", "size": 2, "shape": [2],
                           "low": [-2.0, -0.5], "high": [2.0, 0.5]}
    assert action_rule(case["graph"].info) == meta["act"]


def _strict(constant: str) -> None:
    raise ValueError(f"{constant} is no JSON")


def test_model_json_is_plain_json_with_infinite_bounds(tmp_path):
    """CartPole's observation bounds are infinite: model.json writes them as strings every JSON
    parser reads (not Python's Infinity), and serving from the export reads them back."""
    policy = ppo_policy(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Box(-np.inf, np.inf, (2,)))
    policy.export_model(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text(), parse_constant=_strict)
    assert meta["observation_space"]["low"] == ["-Infinity"] * 4
    assert meta["act"]["high"] == ["Infinity"] * 2
    assert json.loads(json.dumps(meta, allow_nan=False)) == meta  # nothing non-standard left
    from amber.serving.policy import describe_space

    space = describe_space(meta["observation_space"])
    assert np.isneginf(space["low"]).all() and space["low"].dtype == np.float32
    obs = np.array([[0.5, -1.0, 2.0, 0.1]], np.float32)
    out = {"action_dist_inputs": policy.compute_actions(obs, explore=False)[2]["action_dist_inputs"]}
    np.testing.assert_allclose(greedy_action(meta["act"], out), out["action_dist_inputs"][:, :2])


def test_reexport_of_other_weights_removes_the_stale_model_files(tmp_path):
    pytest.importorskip("onnx")
    policy = ppo_policy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    policy.export_model(tmp_path)
    policy.export_model(tmp_path, onnx=17)  # same weights: both files are listed
    meta = json.loads((tmp_path / "model.json").read_text())
    assert set(meta["files"]) == {"model.pt2", "model.onnx"}
    scale_weights(policy, 1.0, 99)
    policy.export_model(tmp_path, onnx=17)  # new weights: model.pt2 would be stale
    meta = json.loads((tmp_path / "model.json").read_text())
    assert set(meta["files"]) == {"model.onnx"}
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.onnx"]
    assert meta["weights_digest"] == weights_digest(policy.export_graph())


def test_unrelated_files_in_the_directory_are_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    export_model(squashed_graph(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt2", "notes.txt"]


def test_greedy_action_rules():
    q = {"action_dist_inputs": np.array([[0.1, 0.9, 0.3], [2.0, -1.0, 0.0]], np.float32)}
    assert greedy_action({"op": "argmax", "output": "action_dist_inputs", "offset": 2}, q).tolist() == [3, 2]
    box = {"output": "action_dist_inputs", "size": 2, "shape": [2], "low": [-1.0, 0.0], "high": [1.0, 4.0]}
    out = {"action_dist_inputs": np.array([[3.0, -3.0, 0.1, 0.1]], np.float32)}
    assert greedy_action({**box, "op": "clip"}, out).tolist() == [[1.0, 0.0]]
    squashed = greedy_action({**box, "op": "tanh_squash"}, out)
    np.testing.assert_allclose(squashed, [[np.tanh(3.0), 2 * (np.tanh(-3.0) + 1)]], rtol=1e-6)


# --------------------------------------------------------------------------
# errors, safety, plugins
# --------------------------------------------------------------------------


def test_missing_onnx_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(MissingPluginError, match=r"pip install 'amber-rl\[onnx\]'"):
        export_model(dueling_graph(), tmp_path / "out", onnx=17)
    assert os.listdir(tmp_path) == []  # nothing left behind, not even the directory it made


def test_missing_tensorflow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(MissingPluginError, match=r"pip install 'amber-rl\[keras\]'"):
        export_model(dueling_graph(), tmp_path / "out", format="keras")
    assert os.listdir(tmp_path) == []


def test_unknown_exporter_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownExporterError, match="keras, onnx, torch"):
        export_model(dueling_graph(), tmp_path / "out", format="tflite")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("opset", [3, 10_000])
def test_unsupported_opset(tmp_path, opset):
    pytest.importorskip("onnx")
    with pytest.raises(ExportError, match=f"opset {opset} is not supported"):
        export_model(dueling_graph(), tmp_path, onnx=opset)
    assert os.listdir(tmp_path) == []


def test_a_failed_export_leaves_no_directory_it_made(tmp_path):
    pytest.importorskip("onnx")
    (tmp_path / "kept").mkdir()
    with pytest.raises(ExportError, match="opset 99 is not supported"):
        export_model(dueling_graph(), tmp_path / "kept" / "a" / "b", onnx=99)
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []  # as it was


def test_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(ExportError, match="symbolic link"):
        export_model(dueling_graph(), tmp_path / "link")
    assert os.listdir(real) == []


def test_symlinked_target_inside_is_refused(tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.json").symlink_to(outside)
    with pytest.raises(ExportError, match="symbolic link"):
        export_model(dueling_graph(), out)
    assert outside.read_text() == "{}"
    assert sorted(os.listdir(out)) == ["model.json"]


@pytest.mark.parametrize("kwargs", [{}, {"onnx": 17}, {"format": "keras"}], ids=["torch", "onnx", "keras"])
def test_nothing_is_written_outside_the_directory(tmp_path, kwargs):
    if "onnx" in kwargs:
        pytest.importorskip("onnx")
    if "format" in kwargs:
        pytest.importorskip("tensorflow")
    out = tmp_path / "a" / "out"
    export_model(dueling_graph(), out, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames + filenames:
            assert not (Path(dirpath) / name).is_symlink()


class _Exporters:
    """A third-party exporter plugin, registered on a test's own plugin manager."""

    def __init__(self, export, **fields) -> None:
        self.export = export
        self.fields = fields

    def amber_register_exporters(self):
        from amber.registry import ExporterSpec

        return [ExporterSpec(name="txt", export=self.export, description="a test exporter", **self.fields)]


def _with_exporter(pm, export, **fields):
    """``pm`` with the exporter registered (before its registry is first built)."""
    import amber

    plugin = _Exporters(export, **fields)
    amber.hookimpl(plugin.amber_register_exporters.__func__)
    pm.register(plugin, name="txt_exporter")
    return pm


def test_format_names_any_registered_exporter(tmp_path, bare_pm):
    def export(graph, directory, options):
        path = directory / "model.txt"
        path.write_text(",".join(graph.output_names))
        return [path]

    pm = _with_exporter(bare_pm, export)
    written = export_model(dueling_graph(), tmp_path, format="txt", pm=pm)
    assert [p.name for p in written] == ["model.txt", "model.json"]
    assert (tmp_path / "model.txt").read_text() == "action_dist_inputs"
    assert json.loads((tmp_path / "model.json").read_text())["files"]["model.txt"]["exporter"] == "txt"


def test_a_failing_exporter_changes_nothing(tmp_path, bare_pm):
    export_model(dueling_graph(), tmp_path, pm=bare_pm)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def export(graph, directory, options):
        (directory / "model.txt").write_text("half")
        raise RuntimeError("exporter crashed")

    pm = _with_exporter(get_plugin_manager(autoload=False), export)
    with pytest.raises(ExportError, match="the 'txt' exporter .*RuntimeError: exporter crashed"):
        export_model(squashed_graph(), tmp_path, format="txt", pm=pm)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_exporter_writing_a_symlink_is_refused(tmp_path, bare_pm):
    def export(graph, directory, options):
        (directory / "model.txt").symlink_to("/etc/passwd")
        return [directory / "model.txt"]

    pm = _with_exporter(bare_pm, export)
    with pytest.raises(ExportError, match="symbolic link"):
        export_model(dueling_graph(), tmp_path, format="txt", pm=pm)
    assert os.listdir(tmp_path) == []


def test_an_exporter_reporting_a_path_outside_is_refused(tmp_path, bare_pm):
    def export(graph, directory, options):
        return [tmp_path.parent / "elsewhere"]

    pm = _with_exporter(bare_pm, export)
    with pytest.raises(ExportError, match="outside the export directory"):
        export_model(dueling_graph(), tmp_path / "out", format="txt", pm=pm)


def _txt_export(graph, directory, options):
    """A third-party exporter: the output names, and the options it was given, in model.txt."""
    path = directory / "model.txt"
    path.write_text(",".join(graph.output_names) + repr(sorted(options.items())))
    return [path]


TXT_FILE = ExportedFile("model.txt", "open(path).read().split(',')", "python")


def test_a_third_party_exporter_is_first_class(tmp_path):
    """Declared files, no shorthand: model.json entries and stale-file cleanup like the in-tree ones."""
    pm = _with_exporter(get_plugin_manager(autoload=False), _txt_export, files=(TXT_FILE,))
    graph = dueling_graph()
    export_model(graph, tmp_path, format="txt", pm=pm)
    export_model(graph, tmp_path, pm=pm)  # same weights, native files: model.txt is kept
    meta = json.loads((tmp_path / "model.json").read_text())
    assert set(meta["files"]) == {"model.txt", "model.pt2"}
    entry = meta["files"]["model.txt"]
    assert {k: entry[k] for k in ("exporter", "runtime", "load")} == {
        "exporter": "txt", "runtime": "python", "load": "open(path).read().split(',')"}
    assert entry["size"] == (tmp_path / "model.txt").stat().st_size
    assert entry["digest"].startswith("xxh3_128:")
    assert meta["files"]["model.pt2"]["runtime"] == "torch"
    export_model(squashed_graph(), tmp_path, pm=pm)  # other weights: the third party's file is stale too
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt2"]
    export_model(graph, tmp_path, format="txt", pm=pm)  # and the in-tree exporter's files likewise
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.txt"]
    assert set(json.loads((tmp_path / "model.json").read_text())["files"]) == {"model.txt"}


def test_undeclared_files_of_an_earlier_export_are_never_removed(tmp_path):
    """An exporter that declares no files may write any name, but nothing removes them later."""
    pm = _with_exporter(get_plugin_manager(autoload=False), _txt_export)
    export_model(dueling_graph(), tmp_path, format="txt", pm=pm)
    assert "load" not in json.loads((tmp_path / "model.json").read_text())["files"]["model.txt"]
    export_model(squashed_graph(), tmp_path, pm=pm)
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.pt2", "model.txt"]
    assert set(json.loads((tmp_path / "model.json").read_text())["files"]) == {"model.pt2"}


def test_an_exporter_writing_an_undeclared_file_is_refused(tmp_path):
    def export(graph, directory, options):
        (directory / "other.bin").write_bytes(b"x")
        return [directory / "other.bin"]

    pm = _with_exporter(get_plugin_manager(autoload=False), export, files=(TXT_FILE,))
    with pytest.raises(ExportError, match="other.bin, which is not among the files it declares"):
        export_model(dueling_graph(), tmp_path, format="txt", pm=pm)
    assert os.listdir(tmp_path) == []


def test_a_third_party_shorthand_and_native_framework(tmp_path):
    """Keyword shorthands and native exporters are declared by plugins, not known to the engine."""
    pm = _with_exporter(get_plugin_manager(autoload=False), _txt_export, files=(TXT_FILE,),
                        native_for=("numpy",), shorthand="txt_level", shorthand_option="level")
    export_model(dueling_graph(), tmp_path / "a", pm=pm, txt_level=3)
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert set(meta["files"]) == {"model.txt"} and meta["files"]["model.txt"]["level"] == 3
    assert (tmp_path / "a" / "model.txt").read_text() == "action_dist_inputs[('level', 3)]"
    for falsy in (None, False, 0):  # as RLlib's onnx=: asks for nothing, so the native files
        export_model(dueling_graph(), tmp_path / "b", pm=pm, txt_level=falsy)
        assert sorted(os.listdir(tmp_path / "b")) == ["model.json", "model.pt2"]
    numpy_graph = dataclasses.replace(dueling_graph(), framework="numpy")
    export_model(numpy_graph, tmp_path / "c", pm=pm)
    assert sorted(os.listdir(tmp_path / "c")) == ["model.json", "model.txt"]


def test_two_exporters_claiming_one_shorthand_or_framework():
    from amber.registry import build_registry

    class Claims:
        def __init__(self, **fields):
            self.fields = fields

        @amber_hookimpl
        def amber_register_exporters(self):
            return [ExporterSpec(name="other", export=_txt_export, **self.fields)]

    for fields, claim in (({"native_for": ("torch",)}, "native files of 'torch'"),
                          ({"shorthand": "onnx", "shorthand_option": "opset"}, "keyword onnx=")):
        pm = get_plugin_manager(autoload=False)
        pm.register(Claims(**fields), name="claims")
        with pytest.raises(DuplicateFormatError, match=claim) as e:
            build_registry(pm)
        assert "'claims'" in str(e.value) and "_export'" in str(e.value)


def test_onnx_false_none_or_zero_writes_the_native_files(tmp_path):
    """The seed's ``policy.export_model(dir, onnx=False)``: as in RLlib, the native files."""
    policy = ppo_policy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    for i, onnx in enumerate((False, None, 0)):
        written = policy.export_model(tmp_path / str(i), onnx=onnx)
        assert [Path(p).name for p in written] == ["model.pt2", "model.json"]
        assert sorted(os.listdir(tmp_path / str(i))) == ["model.json", "model.pt2"]
    with pytest.raises(ExportError, match="opset number"):
        policy.export_model(tmp_path / "bad", onnx="17")


def test_a_graph_without_a_framework_needs_an_exporter_named(tmp_path):
    graph = dataclasses.replace(dueling_graph(), framework=None)
    with pytest.raises(ExportError, match="names no framework.*format=NAME"):
        export_model(graph, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_keyword_or_framework(tmp_path):
    with pytest.raises(UnknownExporterError, match="no exporter takes the keyword tflite= .*onnx"):
        export_model(dueling_graph(), tmp_path / "out", tflite=8)
    with pytest.raises(UnknownExporterError, match="native files of 'jax'"):
        export_model(dataclasses.replace(dueling_graph(), framework="jax"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_in_tree_exporters_describe_themselves():
    from amber.registry import get_registry

    exporters = {name: p.item for name, p in get_registry(get_plugin_manager(autoload=False)).exporters.items()}
    files = {name: [f.name for f in spec.files] for name, spec in exporters.items()}
    saved_model_parts = ["saved_model.pb", "variables", "assets", "fingerprint.pb"]  # a tf2 policy's, at the root
    assert files == {"torch": ["model.pt2"], "onnx": ["model.onnx"],
                     "keras": ["saved_model", "model.keras", *saved_model_parts]}
    assert {name: spec.extra for name, spec in exporters.items()} == {"torch": None, "onnx": "onnx", "keras": "keras"}
    assert exporters["torch"].native_for == ("torch",) and exporters["keras"].native_for == ("tf2",)
    assert (exporters["onnx"].shorthand, exporters["onnx"].shorthand_option) == ("onnx", "opset")
    assert exporters["onnx"].install_hint == "install it with: pip install 'amber-rl[onnx]'"


def test_a_crashed_exports_staging_is_removed_by_the_next_export(tmp_path):
    """Exports stage like checkpoints (amber.atomic): a dead writer's staging dir and marker go, a live one's stay."""
    out = tmp_path / "out"
    dead = out / ".out.amber-tmp-999999999-0123abcd"
    (dead / "saved_model").mkdir(parents=True)
    (out / ".out.amber-tmp-999999999-0123abcd.marker").write_text("")
    live = out / f".out.amber-tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    (out / f".out.amber-tmp-{os.getpid()}-0123abcd.marker").write_text("")
    export_model(dueling_graph(), out)
    assert sorted(os.listdir(out)) == sorted(["model.json", "model.pt2", live.name, live.name + ".marker"])


def test_registering_the_exporters_imports_no_framework():
    code = ("import sys; from amber.registry import get_registry; r = get_registry(); "
            "assert {'torch', 'onnx', 'keras'} <= set(r.exporters), r.exporters; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_policy_without_a_graph_says_so(tmp_path):
    from amber.policy.policy import Policy

    with pytest.raises(NotImplementedError, match="does not describe its network"):
        Policy().export_model(tmp_path)


# --------------------------------------------------------------------------
# checkpoints with export_native_model_files
# --------------------------------------------------------------------------


def test_native_model_files_in_every_policy_checkpoint(tmp_path):
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole
    from amber.policy.policy import Policy
    from amber.utils.checkpoints import verify

    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
            .training(model={"fcnet_hiddens": [16]})
            .checkpointing(export_native_model_files=True, format="msgpack").build())
    path = Path(algo.save(tmp_path / "algo").checkpoint.path)
    algo.save(tmp_path / "background", block=False).result(timeout=120)  # exports a copy of the graph
    for pid in ("p0", "p1"):
        meta = json.loads((tmp_path / "background" / "policies" / pid / "model" / "model.json").read_text())
        assert meta["policy_id"] == pid
        model_dir = path / "policies" / pid / "model"
        assert sorted(os.listdir(model_dir)) == ["model.json", "model.pt2"]
        meta = json.loads((model_dir / "model.json").read_text())
        assert meta["weights_digest"] == weights_digest(algo.get_policy(pid).export_graph())
        assert meta["policy_id"] == pid
        manifest = json.loads((path / "policies" / pid / "checkpoint.json").read_text())
        assert {"model/model.pt2", "model/model.json"} <= set(manifest["files"])
    policy_ckpt = Path(algo.get_policy("p0").export_checkpoint(tmp_path / "policy", policy_id="p0"))
    assert sorted(os.listdir(policy_ckpt / "model")) == ["model.json", "model.pt2"]
    assert json.loads((policy_ckpt / "model" / "model.json").read_text())["policy_id"] == "p0"
    for ckpt in (path, policy_ckpt):
        report = verify(ckpt)
        assert not report.problems, report.problems
        assert any("model/model.pt2" in str(c) for c in report.checked)
    # and the checkpoints still restore
    restored = Algorithm.from_checkpoint(path, policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
    assert set(restored.policies) == {"p0", "p1"}
    restored.stop()
    assert isinstance(Policy.from_checkpoint(policy_ckpt), Policy)
    algo.stop()


def test_convert_and_migrate_keep_the_model_files(tmp_path):
    """Exported model files do not depend on the checkpoint format: a rewrite carries them, verified."""
    from amber.algorithms.ppo import PPOConfig
    from amber.errors import CorruptCheckpointError
    from amber.utils.checkpoints import convert_checkpoint, migrate_checkpoint, verify

    algo = (PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]})
            .checkpointing(export_native_model_files=True).build())
    src = Path(algo.save(tmp_path / "pickle").checkpoint.path)
    dst = Path(convert_checkpoint(src, tmp_path / "msgpack", format="msgpack"))
    model = "policies/default_policy/model"
    for name in ("model.json", "model.pt2"):
        assert (dst / model / name).read_bytes() == (src / model / name).read_bytes()
    assert not verify(dst).problems
    migrate_checkpoint(dst)  # in place: already current, nothing lost
    assert (dst / model / "model.pt2").exists() and not verify(dst).problems
    # a damaged model file is not copied silently
    with open(src / model / "model.pt2", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptCheckpointError, match="model.pt2"):
        convert_checkpoint(src, tmp_path / "again", format="msgpack")
    assert not (tmp_path / "again").exists()
    algo.stop()


def test_no_model_files_by_default(tmp_path):
    from amber.algorithms.ppo import PPOConfig

    algo = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}).build()
    path = Path(algo.save(tmp_path / "algo").checkpoint.path)
    assert not (path / "policies" / "default_policy" / "model").exists()
    algo.stop()
