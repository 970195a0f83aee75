"""num_env_runners > 0 is refused with the extra to install, never silently ignored; a checkpoint
that says otherwise (RLlib's, trained with remote workers) is read with 0 and a warning."""

from __future__ import annotations

import importlib.util

import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint


def _config(**runners):
    return (PPOConfig().environment("CartPole-v1").env_runners(**runners)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]}))


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed here")
def test_remote_env_runners_without_ray_name_the_extra():
    with pytest.raises(ValueError, match=r"amber-rl\[ray\]"):
        _config(num_env_runners=2).build()


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_num_env_runners_must_be_a_count(bad):
    config = _config()
    config.num_env_runners = bad
    with pytest.raises(ValueError, match="num_env_runners"):
        config.build()


def test_zero_env_runners_sample_in_process():
    algo = _config(num_env_runners=0, num_envs_per_env_runner=2).build()
    assert algo.train()["num_env_steps_sampled_lifetime"] >= 64
    algo.stop()


def test_a_checkpoint_with_remote_runners_loads_with_zero_and_a_warning(tmp_path):
    algo = _config().build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    ckpt = read_checkpoint(tmp_path / "src", migrate=False)
    ckpt.state["config"]["num_env_runners"] = 4  # as an RLlib run with four workers would say
    write_checkpoint(tmp_path / "ck", type="Algorithm", state=ckpt.state,
                     policies={pid: p.state for pid, p in ckpt.policies.items()}, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    with pytest.warns(UserWarning, match="num_env_runners"):
        restored = Algorithm.from_checkpoint(tmp_path / "ck")
    assert restored.config.num_env_runners == 0
    restored.train()
    restored.stop()
