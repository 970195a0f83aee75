"""Ray Tune runs amber algorithms (``amber.tune.trainable``) with amber checkpoints, on a real local
Ray (one session for the module): retention per CheckpointConfig, ``Tuner.restore`` of an interrupted
experiment, PopulationBasedTraining."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import amber

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from amber.algorithms.algorithm import Algorithm  # noqa: E402
from amber.algorithms.callbacks import DefaultCallbacks  # noqa: E402
from amber.algorithms.ppo import PPOConfig  # noqa: E402
from amber.tune import algorithm_config, trainable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def space(**extra):
    config = (PPOConfig().environment("CartPole-v1").debugging(seed=0)
              .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
              .checkpointing(format="msgpack"))
    return {**config.to_dict(), **extra}


class FailOnceAtIterationTwo(DefaultCallbacks):
    """Interrupts the trial the first time it reaches iteration 2 (a marker in its log dir says it did)."""

    def on_train_result(self, *, algorithm, result, **kwargs):
        marker = Path(algorithm.logdir) / "failed_once"
        if result["training_iteration"] == 2 and not marker.exists():
            marker.touch()
            raise RuntimeError("interrupted")


amber.register_class(FailOnceAtIterationTwo, name="tests.tune.FailOnceAtIterationTwo")


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray (2 CPUs) for every test here; the workers import this module by name."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}})
    yield
    ray.shutdown()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "amber", *args], capture_output=True, text=True, timeout=120)


def test_two_trials_keep_amber_checkpoints_per_checkpoint_config(tmp_path):
    param_space = space(lr=tune.grid_search([1e-3, 1e-4]))
    tuner = tune.Tuner(trainable("PPO"), param_space=param_space, run_config=tune.RunConfig(
        name="grid", storage_path=str(tmp_path), stop={"training_iteration": 4}, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=3, checkpoint_frequency=1)))  # docs/scaling.md: >= 3
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    for result in results:
        assert result.metrics["training_iteration"] == 4
        assert result.metrics["num_env_steps_sampled_lifetime"] >= 4 * 64
        trial_dir = Path(result.path)
        assert len(sorted(trial_dir.glob("checkpoint_*"))) == 3  # num_to_keep: the first one deleted
        algo = Algorithm.from_checkpoint(result.checkpoint.path)
        assert algo.iteration == 4 and algo.config.lr == result.config["lr"]
        algo.stop()
    path = results[0].checkpoint.path
    assert _cli("verify", path).returncode == 0
    inspected = _cli("inspect", path)
    assert inspected.returncode == 0 and "msgpack" in inspected.stdout


def test_tuner_restore_resumes_an_interrupted_trial_from_its_checkpoint(tmp_path):
    run_config = tune.RunConfig(name="restore", storage_path=str(tmp_path), stop={"training_iteration": 3},
                                verbose=0, checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1))
    first = tune.Tuner(trainable("PPO"), param_space=space(callbacks_class=FailOnceAtIterationTwo),
                       run_config=run_config).fit()
    assert first.errors  # interrupted at iteration 2, after the checkpoint of iteration 1
    assert tune.Tuner.can_restore(tmp_path / "restore")
    restored = tune.Tuner.restore(str(tmp_path / "restore"), trainable=trainable("PPO"), resume_errored=True)
    results = restored.fit()
    assert not results.errors
    result = results[0]
    assert result.metrics["training_iteration"] == 3
    algo = Algorithm.from_checkpoint(result.checkpoint.path)
    # the amber state went on from iteration 1's checkpoint: 3 iterations of samples, not 3 + 1
    assert algo.iteration == 3 and algo.counters["num_env_steps_sampled_lifetime"] == 3 * 64
    algo.stop()


def test_population_based_training_exploits_amber_checkpoints(tmp_path):
    pbt = tune.schedulers.PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=1, quantile_fraction=0.5, synch=True,
        hyperparam_mutations={"lr": [1e-3, 5e-4, 1e-4]})
    tuner = tune.Tuner(trainable("PPO"), param_space=space(lr=tune.grid_search([1e-3, 1e-4])),
                       tune_config=tune.TuneConfig(scheduler=pbt, metric="episode_return_mean", mode="max",
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(name="pbt", storage_path=str(tmp_path), verbose=0,
                                                 stop={"training_iteration": 3}))
    results = tuner.fit()
    assert len(results) == 2 and not results.errors
    assert pbt._num_perturbations > 0  # some trial took another's checkpoint
    for result in results:
        assert result.metrics["training_iteration"] == 3


def test_a_param_space_key_that_is_no_setting_is_named():
    with pytest.raises(ValueError, match="learning_rate"):
        algorithm_config("PPO", {"env": "CartPole-v1", "learning_rate": 1e-3})
    assert algorithm_config("PPO", {"env": "CartPole-v1", "lr": 1e-3}).lr == 1e-3


def test_reset_config_then_restore_keeps_the_new_learning_rate(tmp_path):
    """What PBT's exploit does to a reused trial: a new config, then another trial's checkpoint."""
    cls = trainable("PPO")
    donor = cls(config=space(lr=1e-3))
    donor.train()
    saved = donor.save(str(tmp_path / "ck"))
    receiver = cls(config=space(lr=1e-3))
    assert receiver.reset_config(space(lr=2e-4))
    receiver.restore(saved)
    assert receiver.algo.iteration == 1
    opt = receiver.algo.get_policy().get_optimizer("default")
    assert all(group["lr"] == 2e-4 for group in opt.param_groups)
    copy = Algorithm.from_checkpoint(tmp_path / "ck")
    assert copy.config.lr == 1e-3  # the checkpoint keeps the donor's config
    copy.stop()
    donor.stop()
    receiver.stop()


def test_a_trial_samples_on_its_own_remote_env_runners(tmp_path):
    """The trial asks Tune for its runners' CPUs too; its checkpoint holds their state."""
    results = tune.Tuner(trainable("PPO"), param_space=space(num_env_runners=1, num_cpus_per_env_runner=0.5),
                         run_config=tune.RunConfig(name="runners", storage_path=str(tmp_path), verbose=0,
                                                   stop={"training_iteration": 1},
                                                   checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True))).fit()
    assert not results.errors
    algo = Algorithm.from_checkpoint(results[0].checkpoint.path)
    try:
        assert algo.env_runner.num_runners == 1
        assert len(algo.get_state()["algorithm"]["components"]["env_runner"]["remote_runners"]) == 1
    finally:
        algo.stop()
