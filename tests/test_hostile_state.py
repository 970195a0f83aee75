"""Checkpoints whose state is well-formed, digests valid, but whose declared sizes and fields are
hostile: every load refuses them up front with an InvalidStateError naming the path, allocates
nothing in proportion to what they declare, and a failed ``restore()`` changes nothing."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.envs.multi_agent import MultiAgentCartPole
from amber.errors import InvalidStateError
from amber.models.build_budget import ModelSizeError
from amber.policy.policy import Policy
from tests.treeutil import assert_tree_equal

HUGE = 10**6


def _ppo(**model: Any) -> Any:
    return (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1,
                      model={"fcnet_hiddens": [8], **model})
            .debugging(seed=3).build())


def _dqn() -> Any:
    return (DQNConfig().environment("CartPole-v1")
            .training(train_batch_size=16, num_steps_sampled_before_learning_starts=0,
                      replay_buffer_config={"capacity": 200}, model={"fcnet_hiddens": [8]})
            .checkpointing(store_replay_buffer=True).debugging(seed=3).build())


def rewritten(src: Path, dst: Path, edit: Callable[[dict[str, Any], dict[str, dict[str, Any]]], None]) -> Path:
    """``src`` decoded, edited and written again with valid digests, as an attacker could."""
    ckpt = read_checkpoint(src, migrate=False)
    state = ckpt.state
    policies = {pid: p.state for pid, p in ckpt.policies.items()}
    edit(state, policies)
    write_checkpoint(dst, type=ckpt.type, state=state, policies=policies or None, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    return dst


def refused_quickly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> InvalidStateError:
    """``fn`` raises InvalidStateError naming its path, without growing the process by 200 MB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(InvalidStateError) as info:
        fn(*args, **kwargs)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb
    assert time.monotonic() - start < 30
    assert info.value.path is not None and info.value.path in str(info.value)
    return info.value


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("saved")
    ppo, dqn = _ppo(), _dqn()
    ppo.train()
    dqn.train()
    out = {"ppo": root / "ppo", "dqn": root / "dqn", "policy": root / "policy"}
    ppo.save(out["ppo"], format="msgpack")
    dqn.save(out["dqn"], format="msgpack")
    ppo.get_policy().export_checkpoint(out["policy"], format="msgpack")
    ppo.stop()
    dqn.stop()
    return out


def _cause_chain(err: BaseException) -> list[type]:
    kinds = []
    while err is not None:
        kinds.append(type(err))
        err = err.__cause__ or err.__context__
    return kinds


@pytest.mark.parametrize("hiddens", [[HUGE, HUGE], [10**12], [8, 4096, 4096]])
def test_declared_layer_sizes_beyond_the_saved_weights_are_refused_before_allocation(saved, tmp_path, hiddens):
    def edit(state, policies):
        state["config"]["model"]["fcnet_hiddens"] = hiddens
        policies["default_policy"]["policy_spec"]["config"]["model"]["fcnet_hiddens"] = hiddens

    path = rewritten(saved["ppo"], tmp_path / "ck", edit)
    err = refused_quickly(Algorithm.from_checkpoint, path)
    assert ModelSizeError in _cause_chain(err)
    err = refused_quickly(Policy.from_checkpoint, path)
    assert ModelSizeError in _cause_chain(err)


def test_a_policy_checkpoint_declaring_a_huge_observation_space_is_refused(saved, tmp_path):
    def edit(state, policies):
        state["policy_spec"]["observation_space"] = {"type": "Discrete", "n": 10**12, "start": 0}

    path = rewritten(saved["policy"], tmp_path / "ck", edit)
    err = refused_quickly(Policy.from_checkpoint, path)
    assert ModelSizeError in _cause_chain(err)


def test_a_smaller_declared_model_is_a_shape_error_not_a_broadcast(saved, tmp_path):
    def edit(state, policies):
        policies["default_policy"]["policy_spec"]["config"]["model"]["fcnet_hiddens"] = [1]

    path = rewritten(saved["ppo"], tmp_path / "ck", edit)
    assert "shape" in str(refused_quickly(Policy.from_checkpoint, path))


def test_dqn_head_sizes_are_bounded_by_the_weights(saved, tmp_path):
    def edit(state, policies):
        state["config"]["hiddens"] = [HUGE]
        policies["default_policy"]["policy_spec"]["config"]["hiddens"] = [HUGE]

    path = rewritten(saved["dqn"], tmp_path / "ck", edit)
    assert ModelSizeError in _cause_chain(refused_quickly(Algorithm.from_checkpoint, path))


def test_a_million_declared_env_copies_are_refused_before_any_is_built(saved, tmp_path):
    path = rewritten(saved["ppo"], tmp_path / "ck",
                     lambda state, _: state["config"].update(num_envs_per_env_runner=HUGE))
    err = refused_quickly(Algorithm.from_checkpoint, path)
    assert "num_envs_per_env_runner" in str(err)


def test_without_saved_env_state_the_env_count_is_bounded(saved, tmp_path):
    def edit(state, _):
        state["config"]["num_envs_per_env_runner"] = HUGE
        del state["components"]["env_runner"]

    path = rewritten(saved["ppo"], tmp_path / "ck", edit)
    assert "num_envs_per_env_runner" in str(refused_quickly(Algorithm.from_checkpoint, path))


def test_a_million_declared_agents_are_refused(tmp_path):
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=_by_parity)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
            .build())
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    path = rewritten(tmp_path / "src", tmp_path / "ck",
                     lambda state, _: state["config"]["env_config"].update(num_agents=HUGE))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # continuing the saved episodes builds the env to restore them: refused there, named
    with pytest.raises(InvalidStateError, match="num_agents") as e:
        Algorithm.from_checkpoint(path, policy_mapping_fn=_by_parity)
    assert str(path) in str(e.value)
    # restarting them (another set of policies), the policies' spaces are saved, so restoring
    # builds no env: it is refused when sampling starts
    restored = Algorithm.from_checkpoint(path, policy_ids=["p0", "p1"], policy_mapping_fn=_by_parity)
    with pytest.raises(ValueError, match="num_agents"):
        restored.train()
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200
    restored.stop()


def _by_parity(agent_id: Any, episode: Any = None, worker: Any = None, **kwargs: Any) -> str:
    return f"p{int(agent_id) % 2}"


def _slot_edits() -> dict[str, Callable[[dict[str, Any]], None]]:
    def not_started(slot):  # a slot written as captured but not started cannot be saved again
        slot["started"] = np.array(0.0)

    def started_as_array(slot):
        slot["started"] = np.array(True)

    return {
        "started as a float array": not_started,
        "started as a bool array": started_as_array,
        "ep_len as text": lambda slot: slot.update(ep_len="12"),
        "mapping to a non-id": lambda slot: slot.update(mapping={0: 7}),
        "pending as a list": lambda slot: slot.update(pending=[1, 2]),
        "return as a bool": lambda slot: slot.update(ep_return=True),
    }


@pytest.mark.parametrize("kind", sorted(_slot_edits()))
def test_bad_episode_slots_are_refused_and_a_failed_restore_changes_nothing(saved, tmp_path, kind):
    edit_slot = _slot_edits()[kind]

    def edit(state, _):
        slot = state["components"]["env_runner"]["slots"][0]
        assert slot["captured"]
        edit_slot(slot)

    path = rewritten(saved["ppo"], tmp_path / "ck", edit)
    refused_quickly(Algorithm.from_checkpoint, path)
    live = Algorithm.from_checkpoint(saved["ppo"])
    before = live.get_state()
    refused_quickly(live.restore, path)
    assert_tree_equal(live.get_state(), before, tuples_as_lists=False)
    live.train()  # and it still trains
    live.stop()


@pytest.mark.parametrize("kind", ["capacity", "cursor as float", "size as text", "rng as list",
                                  "column of objects", "num_added as bool"])
def test_bad_replay_buffer_states_are_refused_and_change_nothing(saved, tmp_path, kind):
    def edit(state, _):
        buf = state["components"]["replay_buffers"]["default_policy"]
        if kind == "capacity":
            buf["capacity"] = 10**15
        elif kind == "cursor as float":
            buf["cursor"] = float(buf["cursor"])
        elif kind == "size as text":
            buf["size"] = str(buf["size"])
        elif kind == "rng as list":
            buf["rng"] = [1, 2, 3]
        elif kind == "column of objects":
            buf["columns"]["obs"] = [[0.0] * 4] * buf["size"]
        else:
            buf["num_added"] = True

    path = rewritten(saved["dqn"], tmp_path / "ck", edit)
    refused_quickly(Algorithm.from_checkpoint, path)
    live = Algorithm.from_checkpoint(saved["dqn"])
    before = live.get_state()
    refused_quickly(live.restore, path)
    assert_tree_equal(live.get_state(), before, tuples_as_lists=False)
    live.stop()


def test_a_million_recent_returns_are_refused_before_conversion(saved, tmp_path):
    path = rewritten(saved["ppo"], tmp_path / "ck", lambda state, _: state["components"]["progress"].update(
        recent_returns=np.zeros(HUGE, np.uint8)))
    assert "recent_returns" in str(refused_quickly(Algorithm.from_checkpoint, path))


def test_a_seed_that_is_not_an_int_is_refused(saved, tmp_path):
    path = rewritten(saved["ppo"], tmp_path / "ck",
                     lambda state, _: state["config"].update(seed=np.zeros(HUGE, np.uint8)))
    assert "seed" in str(refused_quickly(Algorithm.from_checkpoint, path))
