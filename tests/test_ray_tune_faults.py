"""Faults of env runners on Ray and of Ray Tune trials (found by an exploratory tester), on a real
local Ray (2 CPUs, one session for the module): RLlib's config names in a trial's resources, a
registered env inside trials, zero-CPU runners, ``stop()`` after ``ray.shutdown()``, a Tune
``Checkpoint`` object, what a dead runner's error says, RLlib's fault-tolerance names."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from amber.algorithms.algorithm import Algorithm, AlgorithmStoppedError  # noqa: E402
from amber.algorithms.ppo import PPOConfig  # noqa: E402
from amber.envs import register_env  # noqa: E402
from amber.errors import CheckpointError  # noqa: E402
from amber.tune import trainable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def _start_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}})


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray (2 CPUs) for every test here, as in tests/test_tune.py."""
    _start_ray()
    yield
    ray.shutdown()


def cartpole(runners=1, env="CartPole-v1"):
    return (PPOConfig().environment(env).training(**SMALL).debugging(seed=0)
            .env_runners(num_env_runners=runners, num_cpus_per_env_runner=0.5).reporting(log_results=False))


def make_cartpole(env_config):
    return gym.make("CartPole-v1")


class DiesAfter20Steps(gym.Wrapper):
    """CartPole whose process ends at its 21st step (a runner that dies every time it samples)."""

    def __init__(self, env_config=None):
        super().__init__(gym.make("CartPole-v1"))
        self.steps = 0

    def step(self, action):
        self.steps += 1
        if self.steps > 20:
            os._exit(1)
        return self.env.step(action)


def _weights(algo):
    return {k: np.array(v) for k, v in algo.get_policy().get_weights().items()}


# -- 1, 3: a trial's resources -------------------------------------------------------------------

@pytest.mark.parametrize("key", ["num_workers", "num_rollout_workers", "num_env_runners"])
def test_a_trial_reserves_the_cpus_of_runners_given_by_rllib_names(key):
    request = trainable("PPO").default_resource_request(
        {"env": "CartPole-v1", key: 2, "num_cpus_per_env_runner": 0.5})
    assert request is not None and request.bundles == [{"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5}]


def test_zero_cpu_runners_reserve_no_bundle():
    request = trainable("PPO").default_resource_request(
        {"env": "CartPole-v1", "num_env_runners": 1, "num_cpus_per_env_runner": 0})
    assert request is None or all(bundle.get("CPU", 0) > 0 for bundle in request.bundles)


# -- 1, 2, 3 in Tune: RLlib's pattern of register_env, then a Tuner over its name ------------------

def _fit(tmp_path, name, **settings):
    param_space = {**cartpole(env="tuned_cartpole").to_dict(), **settings}
    return tune.Tuner(trainable("PPO"), param_space=param_space, run_config=tune.RunConfig(
        name=name, storage_path=str(tmp_path), verbose=0, stop={"training_iteration": 1})).fit()


def test_a_registered_env_trains_in_a_trial_with_rllib_num_workers(tmp_path):
    register_env("tuned_cartpole", make_cartpole)
    space = {k: v for k, v in cartpole(env="tuned_cartpole").to_dict().items() if k != "num_env_runners"}
    results = tune.Tuner(trainable("PPO"), param_space={**space, "num_workers": 1}, run_config=tune.RunConfig(
        name="registered", storage_path=str(tmp_path), verbose=0, stop={"training_iteration": 1})).fit()
    assert not results.errors, results.errors
    assert results[0].metrics["training_iteration"] == 1


def test_a_trial_with_zero_cpu_runners_runs(tmp_path):
    register_env("tuned_cartpole", make_cartpole)
    results = _fit(tmp_path, "zero_cpu", num_cpus_per_env_runner=0.0)
    assert not results.errors, results.errors
    assert results[0].metrics["training_iteration"] == 1


# -- 4: stop() after ray.shutdown() ---------------------------------------------------------------

def test_stop_after_ray_shutdown_neither_raises_nor_starts_ray():
    algo = cartpole().build()
    try:
        ray.shutdown()
        algo.stop()
        assert not ray.is_initialized()
        with pytest.raises(AlgorithmStoppedError):
            algo.train()
    finally:
        if not ray.is_initialized():
            _start_ray()


def test_stop_marks_the_algorithm_stopped_when_its_runner_fails_to_stop(monkeypatch):
    algo = cartpole(runners=0).build()

    def fails():
        raise RuntimeError("runner would not stop")

    monkeypatch.setattr(algo.env_runner, "stop", fails)
    with pytest.raises(RuntimeError, match="would not stop"):
        algo.stop()
    with pytest.raises(AlgorithmStoppedError):
        algo.train()


# -- 5: a Tune/Train Checkpoint object --------------------------------------------------------------

def test_from_checkpoint_and_restore_take_a_ray_checkpoint(tmp_path):
    from ray.train import Checkpoint

    algo = cartpole(runners=0).build()
    try:
        algo.train()
        ckpt = Checkpoint.from_directory(algo.save(tmp_path / "ck").checkpoint.path)
        copy = Algorithm.from_checkpoint(ckpt)
        assert copy.iteration == 1
        copy.stop()
        algo.train()
        algo.restore(ckpt)
        assert algo.iteration == 1
    finally:
        algo.stop()


def test_a_remote_checkpoint_object_reads_as_its_url():
    from amber.algorithms.algorithm_checkpoints import checkpoint_location

    class S3:
        type_name = "s3"

    class Remote:
        path, filesystem = "bucket/runs/checkpoint_000001", S3()

    assert checkpoint_location(Remote()) == "s3://bucket/runs/checkpoint_000001"


# -- 6, 7: what a dead runner's error says --------------------------------------------------------

def test_a_runner_dying_at_every_rebuild_says_how_many_were_tried():
    register_env("dies_after_20", lambda cfg: DiesAfter20Steps(cfg))
    algo = cartpole(env="dies_after_20").build()
    try:
        with pytest.raises(RuntimeError, match=r"rebuilt 3 time") as info:
            algo.train()
        assert "with .fault_tolerance(restart_failed_env_runners=True) it is" not in str(info.value)
    finally:
        algo.stop()


def test_a_module_the_runners_cannot_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "driver_only_envs.py").write_text(textwrap.dedent("""
        import gymnasium as gym
        class DriverOnlyEnv(gym.Wrapper):
            def __init__(self, config=None):
                super().__init__(gym.make("CartPole-v1"))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not in the Ray workers
    from driver_only_envs import DriverOnlyEnv

    with pytest.raises(RuntimeError, match=r"'driver_only_envs' is not importable in the Ray workers") as info:
        cartpole().environment(DriverOnlyEnv).build()
    assert "runtime_env" in str(info.value) and "rebuilt and its share" not in str(info.value)


def test_restore_with_a_dead_runner_is_the_runners_error_not_the_checkpoints(tmp_path):
    algo = cartpole(runners=2).fault_tolerance(restart_failed_env_runners=False).build()
    try:
        algo.train()
        path = algo.save(tmp_path / "ck").checkpoint.path
        algo.train()
        before, iteration = _weights(algo), algo.iteration
        ray.kill(algo.env_runner.actors[1])
        with pytest.raises(RuntimeError, match="env runner 2") as info:
            algo.restore(path)
        assert not isinstance(info.value, CheckpointError)
        assert algo.iteration == iteration  # rolled back
        assert all(np.array_equal(before[k], v) for k, v in _weights(algo).items())
    finally:
        algo.stop()


# -- 8: RLlib's fault-tolerance names --------------------------------------------------------------

@pytest.mark.parametrize("key", ["recreate_failed_workers", "recreate_failed_env_runners"])
def test_rllib_names_of_restart_failed_env_runners_are_aliases(key):
    assert PPOConfig().fault_tolerance(**{key: False}).restart_failed_env_runners is False
    config = PPOConfig.from_dict({"env": "CartPole-v1", key: False})
    assert config.restart_failed_env_runners is False


@pytest.mark.parametrize("kwargs", [{"max_num_env_runner_restarts": 5}, {"ignore_env_runner_failures": True}])
def test_other_rllib_fault_tolerance_settings_are_refused_with_what_amber_does(kwargs):
    with pytest.raises(ValueError, match="amber rebuilds a remote env runner"):
        PPOConfig().fault_tolerance(**kwargs)
