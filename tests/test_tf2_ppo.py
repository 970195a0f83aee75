"""PPO with ``.framework("tf2")``: Keras policies that train, checkpoint in torch's layout, resume
exactly across processes, and export native files (the seed's export block) and ONNX.

TensorFlow takes seconds to import: the algorithms are built once per module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from amber.algorithms.ppo import PPOConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL = {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 2, "model": {"fcnet_hiddens": [16, 16]}}


def cartpole_config(framework: str = "tf2", seed: int = 7) -> PPOConfig:
    config = PPOConfig().environment("CartPole-v1").framework(framework).training(**SMALL).debugging(seed=seed)
    return config.reporting(log_results=False)


@pytest.fixture(scope="module")
def trained():
    """A tf2 PPO on CartPole after one iteration."""
    algo = cartpole_config().build()
    algo.train()
    yield algo
    algo.stop()


def _leaves(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, f"{path}/{i}")
    else:
        yield path, tree


def test_tf2_policy_state_has_the_torch_policys_layout(trained):
    from amber.policy.tf_policy import PPOTFPolicy

    torch_algo = cartpole_config("torch").build()
    try:
        torch_algo.train()
        tstate = torch_algo.get_policy().get_state()
    finally:
        torch_algo.stop()
    policy = trained.get_policy()
    assert isinstance(policy, PPOTFPolicy) and policy.framework == "tf2"
    state = policy.get_state()
    assert state["framework"] == "tf2" and trained.get_state()["algorithm"]["config"]["framework_str"] == "tf2"
    assert {k: v.shape for k, v in state["weights"].items()} == {k: v.shape for k, v in tstate["weights"].items()}
    assert list(state["weights"]) == list(tstate["weights"])  # torch's names, in torch's order
    opt, topt = state["optimizer"], tstate["optimizer"]
    assert set(opt["state"]) == set(topt["state"])
    for i, entry in topt["state"].items():
        assert set(opt["state"][i]) == set(entry) == {"step", "exp_avg", "exp_avg_sq"}
        assert opt["state"][i]["exp_avg"].shape == entry["exp_avg"].shape
    assert opt["param_groups"][0]["params"] == topt["param_groups"][0]["params"]
    for path, leaf in _leaves(state):  # arrays, numbers, strings, classes: nothing of TensorFlow
        assert not type(leaf).__module__.startswith(("tensorflow", "keras")), path


def test_acting_greedy_and_sampled_shapes(trained):
    policy = trained.get_policy()
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    acts, _, extra = policy.compute_actions(obs, explore=False)
    assert acts.dtype == np.int64 and acts.shape == (5,)
    assert extra["action_dist_inputs"].shape == (5, 2) and extra["vf_preds"].shape == (5,)
    one = [policy.compute_single_action(o, explore=False)[0] for o in obs]  # the numpy path
    assert one == acts.tolist()
    for o, row in zip(obs, extra["action_dist_inputs"], strict=True):
        np.testing.assert_allclose(policy.compute_actions(o[None], explore=False)[2]["action_dist_inputs"][0],
                                   row, atol=1e-5)


_RESUME = """
import json, sys, numpy as np
from amber.algorithms.ppo import PPO
algo = PPO.from_checkpoint(sys.argv[1])
algo.train()
w = algo.get_policy().get_weights()
np.savez(sys.argv[2], **w)
print(json.dumps(algo.iteration))
"""


@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_exact_resume_in_a_new_process(tmp_path, fmt):
    """train 2 == train 1, save, restore in a new process, train 1: identical weights."""
    straight = cartpole_config(seed=3).build()
    straight.train()
    straight.train()
    expected = straight.get_policy().get_weights()
    straight.stop()
    first = cartpole_config(seed=3).build()
    first.train()
    ckpt = first.save(tmp_path / "ckpt", format=fmt).checkpoint.path
    first.stop()
    out = tmp_path / "w.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _RESUME, str(ckpt), str(out)], capture_output=True, text=True,
                          timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == 2
    got = dict(np.load(out))
    assert list(got) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_policy_checkpoint_restores_whole_and_in_part(trained, tmp_path):
    from amber.policy.policy import Policy
    from amber.policy.tf_policy import PPOTFPolicy

    policy = trained.get_policy()
    path = trained.save(tmp_path / "algo", format="msgpack").checkpoint.path
    restored = Policy.from_checkpoint(path, policy_ids=["default_policy"])["default_policy"]
    assert isinstance(restored, PPOTFPolicy)
    obs = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_array_equal(restored.compute_actions(obs, explore=False)[2]["action_dist_inputs"],
                                  policy.compute_actions(obs, explore=False)[2]["action_dist_inputs"])
    mine, theirs = policy.get_state()["optimizer"]["state"], restored.get_state()["optimizer"]["state"]
    for i in mine:
        np.testing.assert_array_equal(mine[i]["exp_avg_sq"], theirs[int(i)]["exp_avg_sq"])
    restored.set_state({"weights": policy.get_weights()})  # a part of a state: the rest is kept
    with pytest.raises(ValueError, match="shapes differ"):
        restored.set_weights({k: np.zeros((3, 3)) for k in policy.get_weights()})


_SEED_BLOCK = """
import numpy as np, tensorflow as tf
from amber.algorithms.ppo import PPOConfig
ppo_config = (PPOConfig().environment("Pendulum-v1").checkpointing(export_native_model_files=True)
              .training(train_batch_size=200, minibatch_size=100, num_epochs=1, model={"fcnet_hiddens": [8]}))
ppo_config.framework("tf2")
ppo = ppo_config.build()
ppo.train()
ppo_policy = ppo.get_policy()
ppo_policy.export_model("{d}/my_nn_model")
keras_model = tf.saved_model.load("{d}/my_nn_model/")
results = keras_model(tf.convert_to_tensor(np.array([[0.0, 0.1, 0.2]]), dtype=np.float32))
checkpoint_dir = ppo_policy.export_checkpoint("{d}/ppo_policy")
keras_model = tf.saved_model.load("{d}/ppo_policy/model")
results2 = keras_model(tf.convert_to_tensor(np.array([[0.0, 0.1, 0.2]]), dtype=np.float32))
checkpoint_dir = ppo.save("{d}/algo").checkpoint.path
keras_model = tf.saved_model.load(checkpoint_dir + "/policies/default_policy/model/")
results3 = keras_model(tf.convert_to_tensor(np.array([[0.0, 0.1, 0.2]]), dtype=np.float32))
ppo_policy.export_model("{d}/my_nn_model", onnx=False)
expected = ppo_policy.compute_actions(np.array([[0.0, 0.1, 0.2]], np.float32), explore=False)[2]
for r in (results, results2, results3):
    np.testing.assert_allclose(r["action_dist_inputs"].numpy(), expected["action_dist_inputs"], atol=1e-5)
    np.testing.assert_allclose(r["vf_preds"].numpy(), expected["vf_preds"], atol=1e-5)
import keras
m = keras.saving.load_model("{d}/my_nn_model/model.keras")
np.testing.assert_allclose(np.asarray(m(np.array([[0.0, 0.1, 0.2]], np.float32))["action_dist_inputs"]),
                           expected["action_dist_inputs"], atol=1e-5)
print("ok")
"""


def test_the_seeds_export_block_runs_with_tf2(tmp_path):
    """The seed's export examples with ``.framework("tf2")``: its ``tf.saved_model.load(...)`` lines as written."""
    code = textwrap.dedent(_SEED_BLOCK).replace("{d}", str(tmp_path))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    names = sorted(os.listdir(tmp_path / "my_nn_model"))
    assert {"saved_model.pb", "variables", "model.keras", "model.json"} <= set(names)


def test_onnx_export_of_a_tf2_policy_matches_onnxruntime(trained, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    policy = trained.get_policy()
    written = policy.export_model(tmp_path / "onnx", onnx=17)
    assert [Path(p).name for p in written] == ["model.onnx", "model.json"]
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    obs = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: obs}), strict=True))
    _, _, extra = policy.compute_actions(obs, explore=False)
    np.testing.assert_allclose(got["action_dist_inputs"], extra["action_dist_inputs"], atol=1e-5)
    np.testing.assert_allclose(got["vf_preds"], extra["vf_preds"], atol=1e-5)


def test_discrete_observations_and_box_actions(tmp_path):
    from amber.policy.tf_policy import PPOTFPolicy

    policy = PPOTFPolicy(gym.spaces.Discrete(5, start=2), gym.spaces.Box(-1, 1, (2, 1), np.float32),
                         {"model": {"fcnet_hiddens": [8], "fcnet_activation": "relu"}, "seed": 1})
    acts, _, extra = policy.compute_actions(np.array([2, 3, 6]), explore=True)
    assert acts.shape == (3, 2, 1) and acts.dtype == np.float32 and extra["action_dist_inputs"].shape == (3, 4)
    assert set(policy.get_weights()) == {"pi.0.weight", "pi.0.bias", "pi.2.weight", "pi.2.bias",
                                         "vf.0.weight", "vf.0.bias", "vf.2.weight", "vf.2.bias"}
    graph = policy.export_graph()
    np.testing.assert_allclose(graph.forward_numpy(np.array([2, 3, 6]))["action_dist_inputs"],
                               extra["action_dist_inputs"], atol=1e-5)


def test_observations_of_the_wrong_shape_are_a_clear_value_error(trained):
    """As the torch policy's: a ValueError naming the expected shape, not a TF or numpy error."""
    policy = trained.get_policy()
    with pytest.raises(ValueError, match=r"shape \(4,\) each, not an array of shape \(4,\); .*compute_single_action"):
        policy.compute_actions(np.zeros(4))
    with pytest.raises(ValueError, match=r"not an array of shape \(2, 5\)"):
        policy.compute_actions(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"one observation of shape \(4,\), not one of shape \(3,\)"):
        policy.compute_single_action(np.zeros(3))


def test_the_learning_benchmark_smoke(tmp_path):
    """benchmarks/tf2_learning.py at its smoke size (its numbers live in docs/frameworks.md)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tf2_learning.py"), "--smoke", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "| tf2 | 0 |" in proc.stdout and "| torch | 0 |" in proc.stdout


def test_optimizer_moments_that_do_not_fit_start_again_with_a_warning():
    from amber.policy.tf_policy import PPOTFPolicy

    spaces = (gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    policy = PPOTFPolicy(*spaces, {"model": {"fcnet_hiddens": [8]}, "seed": 1})
    other = {"state": {0: {"step": np.float32(3), "exp_avg": np.ones((3, 3)), "exp_avg_sq": np.ones((3, 3))}},
             "param_groups": [{"lr": 1e-3, "params": [0]}]}
    policy.set_state({"optimizer": other})
    with pytest.warns(UserWarning, match="does not fit its parameters"):
        policy.optimizer  # noqa: B018 - made on first use, with the restored state
    assert policy.get_state()["optimizer"]["state"] == {}
    assert policy.get_state()["optimizer"]["param_groups"][0]["lr"] == 1e-3
