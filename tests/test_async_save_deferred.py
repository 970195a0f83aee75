"""Background saves copy weights and optimizer moments in their writer thread: whatever changes
them in place waits for that copy, and a change that did not wait fails the save, never a
checkpoint of two moments.

The writer's copy is slowed down here (a delay before it starts), so that training, restores and
``set_weights`` right after ``save(block=False)`` reach the state before the copy does.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import amber.snapshots as snapshots
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.sac import SACConfig
from amber.async_save import wait_for_snapshot
from amber.errors import CheckpointWriteError, StateChangedError
from tests.test_async_save import _settled, assert_same_checkpoint_files, policy_arrays  # noqa: F401 - autouse

DELAY_S = 0.4


@pytest.fixture
def slow_copy(monkeypatch):
    """The writer thread's copy of live arrays starts :data:`DELAY_S` late; ``slow_copy.started``
    is set when it starts copying."""
    real = snapshots._copy_pairs
    started = threading.Event()

    def late(pairs):
        if threading.current_thread() is not threading.main_thread():
            time.sleep(DELAY_S)
            started.set()
        return real(pairs)

    monkeypatch.setattr(snapshots, "_copy_pairs", late)
    late.started = started
    return late


def ppo():
    return (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size=256, minibatch_size=64, num_epochs=2, model={"fcnet_hiddens": [32, 32]})
            .debugging(seed=0))


def ppo_clipped():
    """PPO with its gradients clipped."""
    return ppo().training(grad_clip=0.5)


def dqn():
    return (DQNConfig().environment("CartPole-v1")
            .training(model={"fcnet_hiddens": [32]}, num_steps_sampled_before_learning_starts=50,
                      target_network_update_freq=50, replay_buffer_config={"capacity": 500})
            .reporting(min_sample_timesteps_per_iteration=100).debugging(seed=0))


def sac():
    return (SACConfig().environment("Pendulum-v1")
            .training(model={"fcnet_hiddens": [32]}, num_steps_sampled_before_learning_starts=50,
                      replay_buffer_config={"capacity": 500}, train_batch_size=32)
            .reporting(min_sample_timesteps_per_iteration=60).debugging(seed=0))


CONFIGS = {"ppo": ppo, "ppo_clipped": ppo_clipped, "dqn": dqn, "sac": sac}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_right_after_save_waits_for_the_copy(tmp_path, slow_copy, name):
    algo = CONFIGS[name]().build()
    algo.train()
    algo.train()  # optimizer moments and target networks exist and differ from the start
    sync = algo.save(tmp_path / "sync", format="msgpack")
    before = policy_arrays(algo)
    handle = algo.save(tmp_path / "async", format="msgpack", block=False)
    assert not slow_copy.started.is_set()  # the caller was not held up by the copy
    algo.train()
    assert slow_copy.started.is_set()  # training waited for it before updating
    handle.result(timeout=60)
    assert_same_checkpoint_files(sync.checkpoint.path, handle.path)
    after = policy_arrays(algo)
    assert any(not np.array_equal(after[k], before[k]) for k in before)  # it did train
    algo.stop()


def test_set_weights_and_restore_right_after_save_wait_for_the_copy(tmp_path, slow_copy):
    algo = ppo().build()
    algo.train()
    sync = algo.save(tmp_path / "sync")
    policy = algo.get_policy()
    zeros = {k: np.zeros_like(v) for k, v in policy.get_weights().items()}
    handle = algo.save(tmp_path / "async", block=False)
    policy.set_weights(zeros)
    handle.result(timeout=60)
    assert_same_checkpoint_files(sync.checkpoint.path, handle.path)
    assert all(not v.any() for v in policy.get_weights().values())

    other = ppo().debugging(seed=1).build()
    other.train()
    other_sync = other.save(tmp_path / "other")
    handle = other.save(tmp_path / "other-async", block=False)
    other.restore(sync.checkpoint.path)  # overwrites the weights and moments being saved
    handle.result(timeout=60)
    assert_same_checkpoint_files(other_sync.checkpoint.path, handle.path)
    for a in (algo, other):
        a.stop()


def test_a_change_in_place_that_did_not_wait_fails_the_save_and_writes_nothing(tmp_path, slow_copy):
    algo = ppo().build()
    algo.train()
    param = next(algo.get_policy().model.parameters())
    handle = algo.save(tmp_path / "changed", block=False)
    with torch.no_grad():
        param.add_(1.0)  # the user's own in-place change, without wait_for_snapshot()
    with pytest.raises(StateChangedError, match="wait_for_snapshot") as caught:
        handle.result(timeout=60)
    assert isinstance(caught.value, CheckpointWriteError) and str(tmp_path / "changed") in str(caught.value)
    assert not (tmp_path / "changed").exists()

    sync = algo.save(tmp_path / "sync")  # the writer goes on: later saves work
    handle = algo.save(tmp_path / "waited", block=False)
    wait_for_snapshot()
    with torch.no_grad():
        param.add_(1.0)
    handle.result(timeout=60)
    assert_same_checkpoint_files(sync.checkpoint.path, handle.path)
    algo.stop()


def test_a_users_own_optimizer_step_waits_for_the_copy(tmp_path, slow_copy):
    algo = ppo().build()
    algo.train()
    model = algo.get_policy().model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sync = algo.save(tmp_path / "sync")
    handle = algo.save(tmp_path / "async", block=False)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()  # every torch optimizer's step waits (a global pre-step hook)
    assert slow_copy.started.is_set()
    handle.result(timeout=60)
    assert_same_checkpoint_files(sync.checkpoint.path, handle.path)
    algo.stop()
