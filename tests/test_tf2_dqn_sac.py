"""DQN and SAC with ``.framework("tf2")``: they train, their states have the torch policies' layout,
resume exactly, cross over to torch (and back), and export (native files and ONNX)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from amber.algorithms.dqn import DQN, DQNConfig  # noqa: E402
from amber.algorithms.sac import SAC, SACConfig  # noqa: E402

ALGOS = {
    "dqn": (DQN, "CartPole-v1", 4),
    "sac": (SAC, "Pendulum-v1", 3),
}


def _config(name: str, framework: str, seed: int = 5):
    cls = DQNConfig if name == "dqn" else SACConfig
    env = ALGOS[name][1]
    config = (cls().environment(env).framework(framework).debugging(seed=seed)
              .training(model={"fcnet_hiddens": [16, 16]}, num_steps_sampled_before_learning_starts=64)
              .reporting(log_results=False, min_sample_timesteps_per_iteration=96)
              .checkpointing(store_replay_buffer=True))
    return config.training(train_batch_size=16)


@pytest.fixture(scope="module", params=["dqn", "sac"])
def built(request, tmp_path_factory):
    """Per algorithm: a tf2 one after 2 iterations (updates included), a torch one, and a checkpoint."""
    name = request.param
    tf2 = _config(name, "tf2").build()
    tf2.train()
    tf2.train()
    torch_algo = _config(name, "torch").build()
    torch_algo.train()
    torch_algo.train()
    paths = {fw: a.save(tmp_path_factory.mktemp(f"{name}-{fw}") / "ckpt", format="msgpack").checkpoint.path
             for fw, a in (("tf2", tf2), ("torch", torch_algo))}
    yield name, tf2, torch_algo, paths
    tf2.stop()
    torch_algo.stop()


def _obs(name: str) -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, size=(16, ALGOS[name][2])).astype(np.float32)


def test_state_layout_is_the_torch_policys(built):
    name, tf2, torch_algo, _ = built
    state, tstate = tf2.get_policy().get_state(), torch_algo.get_policy().get_state()
    assert state["framework"] == "tf2" and state["num_grad_updates"] > 0
    assert {k: v.shape for k, v in state["weights"].items()} == {k: v.shape for k, v in tstate["weights"].items()}
    if name == "dqn":
        assert list(state["target_weights"]) == list(tstate["target_weights"])
        assert set(state["optimizer"]["state"]) == set(tstate["optimizer"]["state"])
    else:
        assert set(state["optimizers"]) == set(tstate["optimizers"]) == {"actor", "critic", "alpha"}
        for opt, tree in tstate["optimizers"].items():
            assert set(state["optimizers"][opt]["state"]) == set(tree["state"])
        assert state["learner_generator"].shape == (40,)


_RESUME = """
import sys
import numpy as np
from amber.algorithms.algorithm import Algorithm
algo = Algorithm.from_checkpoint(sys.argv[1])
algo.train()
np.savez(sys.argv[2], **algo.get_policy().get_weights())
algo.stop()
"""


@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_exact_resume_in_a_new_process(built, tmp_path, fmt):
    """train 3 == train 2, save, restore in a new process, train 1: identical weights, replay
    buffer, generators and env included."""
    import os
    import subprocess
    import sys

    name = built[0]
    straight = _config(name, "tf2").build()
    straight.train()
    straight.train()
    ckpt = straight.save(tmp_path / "ckpt", format=fmt).checkpoint.path  # a save changes nothing
    straight.train()
    expected = straight.get_policy().get_weights()
    straight.stop()
    out = tmp_path / "w.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", _RESUME, str(ckpt), str(out)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(np.load(out))
    assert list(got) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("target", ["tf2", "torch"])
def test_cross_framework_same_actions(built, target):
    from amber.policy.policy import Policy

    name, _, _, paths = built
    source = "torch" if target == "tf2" else "tf2"
    with pytest.warns(UserWarning, match="reseeded"):
        algo = ALGOS[name][0].from_checkpoint(paths[source], framework=target)
    try:
        policy = algo.get_policy()
        assert getattr(policy, "framework", "torch") == target
        original = Policy.from_checkpoint(paths[source])["default_policy"]
        obs = _obs(name)
        a, _, ea = policy.compute_actions(obs, explore=False)
        b, _, eb = original.compute_actions(obs, explore=False)
        np.testing.assert_allclose(ea["action_dist_inputs"], eb["action_dist_inputs"], atol=1e-5)
        np.testing.assert_allclose(a, b, atol=1e-5)
        algo.train()  # trains on in the other framework
    finally:
        algo.stop()


def test_native_and_onnx_exports(built, tmp_path):
    name, tf2, _, _ = built
    tf = pytest.importorskip("tensorflow")
    policy = tf2.get_policy()
    obs = _obs(name)
    expected = policy.compute_actions(obs, explore=False)[2]["action_dist_inputs"]
    policy.export_model(tmp_path / "native")
    loaded = tf.saved_model.load(str(tmp_path / "native"))
    np.testing.assert_allclose(loaded(tf.constant(obs))["action_dist_inputs"].numpy(), expected, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    policy.export_model(tmp_path / "onnx", onnx=17)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["action_dist_inputs"], {session.get_inputs()[0].name: obs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
