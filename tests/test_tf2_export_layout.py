"""A tf2 policy's exported files: native model files that verify inside a checkpoint, and the
keras exporter's layout (``DIR/saved_model/``), the same for tf2 and torch policies.

TensorFlow takes seconds to import: the algorithms are built once per module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("keras")

from amber.algorithms.ppo import PPO, PPOConfig  # noqa: E402
from amber.policy.policy import Policy  # noqa: E402
from amber.utils.checkpoints import verify  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
OBS = np.array([[0.0, 0.1, 0.2, 0.3], [0.3, -0.2, 0.1, 0.0]], np.float32)


def _config(framework: str, native: bool = False) -> PPOConfig:
    return (PPOConfig().environment("CartPole-v1").framework(framework).debugging(seed=3)
            .checkpointing(export_native_model_files=native)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [4]})
            .reporting(log_results=False))


@pytest.fixture(scope="module")
def algos():
    """A tf2 PPO writing native model files, and a torch PPO."""
    tf2, torch = _config("tf2", native=True).build(), _config("torch").build()
    yield tf2, torch
    tf2.stop()
    torch.stop()


def _expected(policy) -> np.ndarray:
    return policy.compute_actions(OBS, explore=False)[2]["action_dist_inputs"]


def test_a_tf2_checkpoint_with_native_model_files_verifies_as_written(algos, tmp_path):
    """The SavedModel's empty assets/ folder made `amber verify` fail on a checkpoint amber had just
    written ("directory is not part of the checkpoint"): msgpack, pickle, a background save and
    policy.export_checkpoint all verify, load, and their model/ loads with tf.saved_model.load."""
    import tensorflow as tf

    algo = algos[0]
    policy = algo.get_policy()
    expected = _expected(policy)
    written = {fmt: Path(algo.save(tmp_path / fmt, format=fmt).checkpoint.path) for fmt in ("msgpack", "pickle")}
    written["background"] = Path(algo.save(tmp_path / "background", format="msgpack", block=False)
                                 .result().checkpoint.path)
    models = {name: path / "policies" / "default_policy" / "model" for name, path in written.items()}
    for fmt in ("msgpack", "pickle"):
        written[f"policy_{fmt}"] = Path(policy.export_checkpoint(tmp_path / f"policy_{fmt}", format=fmt))
        models[f"policy_{fmt}"] = written[f"policy_{fmt}"] / "model"
    for name, path in written.items():
        report = verify(path)
        assert report.ok, (name, report.problems)
        model = models[name]
        assert (model / "saved_model.pb").is_file() and not (model / "assets").exists(), name
        got = tf.saved_model.load(str(model))(tf.constant(OBS))["action_dist_inputs"].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
        restored = Policy.from_checkpoint(path, allow_pickle=True)
        restored = restored["default_policy"] if isinstance(restored, dict) else restored
        np.testing.assert_allclose(_expected(restored), expected, atol=1e-5, err_msg=name)
    again = PPO.from_checkpoint(written["pickle"], allow_pickle=True)
    try:
        np.testing.assert_allclose(_expected(again.get_policy()), expected, atol=1e-5)
    finally:
        again.stop()


def test_keras_export_writes_saved_model_for_tf2_and_torch_policies(algos, pm, tmp_path):
    """export_model(dir, format="keras") and `amber export --format keras` write DIR/saved_model/ for a tf2
    policy as for a torch one (a tf2 policy's went to DIR itself); docs/export.md's lines load it.
    export_model(dir) of a tf2 policy still writes RLlib's layout, the SavedModel at DIR itself."""
    import tensorflow as tf
    from click.testing import CliRunner

    from amber.cli import CliState, cli

    keras_layout = ["model.json", "model.keras", "saved_model"]
    for framework, algo in zip(("tf2", "torch"), algos, strict=True):
        policy, out = algo.get_policy(), tmp_path / framework
        policy.export_model(out, format="keras")
        assert sorted(os.listdir(out)) == keras_layout, framework
        serve = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]  # as in the docs
        got = serve(obs=tf.constant(OBS))["action_dist_inputs"].numpy()
        np.testing.assert_allclose(got, _expected(policy), atol=1e-5, err_msg=framework)
    ckpt = algos[0].get_policy().export_checkpoint(tmp_path / "ckpt", format="msgpack")
    result = CliRunner().invoke(cli, ["export", ckpt, str(tmp_path / "cli"), "--format", "keras"],
                                obj=CliState(plugin_manager=pm))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "cli")) == keras_layout
    algos[0].get_policy().export_model(tmp_path / "native")
    assert sorted(os.listdir(tmp_path / "native")) == [
        "fingerprint.pb", "model.json", "model.keras", "saved_model.pb", "variables"]
    facts = json.loads((tmp_path / "native" / "model.json").read_text())["files"]
    assert facts["saved_model.pb"]["native"] is True and "native" not in json.loads(
        (tmp_path / "tf2" / "model.json").read_text())["files"]["saved_model"]


def test_an_export_in_the_old_tf2_layout_still_serves_and_is_replaced_cleanly(algos, tmp_path):
    """A tf2 policy's keras export as an earlier amber wrote it (the SavedModel at DIR itself), beside
    model.onnx: amber.serve.load_policy serves it; a later keras export of other weights into it writes
    saved_model/ and removes the old parts."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from amber.serve import load_policy

    tf2_policy, torch_policy = algos[0].get_policy(), algos[1].get_policy()
    old = tmp_path / "old"
    tf2_policy.export_model(old)  # the old format="keras" layout of a tf2 policy
    tf2_policy.export_model(old, onnx=17)  # same weights: the SavedModel's parts are kept
    assert {"saved_model.pb", "variables", "model.onnx"} <= set(os.listdir(old))
    served = load_policy(old).compute_actions(OBS, explore=False)[2]["action_dist_inputs"]
    np.testing.assert_allclose(served, _expected(tf2_policy), atol=1e-5)
    new = tmp_path / "new"
    tf2_policy.export_model(new, onnx=17, format="keras")
    served = load_policy(new).compute_actions(OBS, explore=False)[2]["action_dist_inputs"]
    np.testing.assert_allclose(served, _expected(tf2_policy), atol=1e-5)
    torch_policy.export_model(old, format="keras")  # other weights: the old parts are stale
    assert sorted(os.listdir(old)) == ["model.json", "model.keras", "saved_model"]


def test_an_older_tf2_checkpoint_with_an_empty_assets_folder_verifies_and_loads(algos, tmp_path):
    """Earlier ambers left the SavedModel's empty assets/ in a policy's model/ folder: such a
    checkpoint verifies (an empty folder holds nothing) and loads."""
    algo = algos[0]
    path = Path(algo.save(tmp_path / "old", format="msgpack").checkpoint.path)
    (path / "policies" / "default_policy" / "model" / "assets").mkdir()
    report = verify(path)
    assert report.ok, report.problems
    restored = Policy.from_checkpoint(path)["default_policy"]
    np.testing.assert_allclose(_expected(restored), _expected(algo.get_policy()), atol=1e-5)
