"""What a restore takes from a checkpoint is checked when it is read, not when it is first used:
a policy whose own config describes another network than its algorithm gives it, an optimizer
state that does not fit its optimizer, a caller's bad ``policies_to_train``; and a checkpoint
never chooses where the loading process saves next (its ``storage_path``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.envs.multi_agent import MultiAgentCartPole
from amber.errors import CheckpointError, InvalidStateError, UnknownFormatError
from amber.models.flat_adam import flat_adam
from amber.policy.policy import Policy, PolicySpec
from amber.serve import load_policy
from tests.treeutil import assert_tree_equal

#: The multi-agent checkpoints' lambdas are given again at load.
pytestmark = pytest.mark.filterwarnings("ignore:.*has no registered name:UserWarning")

_SMALL = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def _ppo(**checkpointing: Any) -> Any:
    return (PPOConfig().environment("CartPole-v1").training(**_SMALL).checkpointing(**checkpointing)
            .reporting(log_results=False).debugging(seed=3).build())


def _rewritten(src: Path, dst: Path, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> Path:
    """``src`` decoded, edited and written again with valid digests, as anyone could."""
    ckpt = read_checkpoint(src, migrate=False)
    policies = {pid: p.state for pid, p in ckpt.policies.items()}
    edit(ckpt.state, policies)
    write_checkpoint(dst, type=ckpt.type, state=ckpt.state, policies=policies, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO checkpoint (msgpack) of a trained algorithm: its Adam has moments."""
    algo = _ppo()
    algo.train()
    path = tmp_path_factory.mktemp("trained") / "ck"
    algo.save(path, format="msgpack")
    algo.stop()
    return path


def _policy_state(algo: Any) -> dict[str, Any]:
    state = algo.get_policy().get_state()
    state.pop("policy_spec")
    return state


# -- one network per policy ------------------------------------------------------------------

def _relu_policy(state: dict[str, Any], policies: dict[str, Any]) -> None:
    policies["default_policy"]["policy_spec"]["config"]["model"]["fcnet_activation"] = "relu"


def test_a_policy_saved_with_another_network_than_its_algorithm_gives_is_refused(trained, tmp_path):
    """The algorithm's config said tanh, the policy's own spec relu: Algorithm.from_checkpoint built
    tanh, Policy.from_checkpoint and amber.serve relu, and their actions differed."""
    bad = _rewritten(trained, tmp_path / "two", _relu_policy)
    with pytest.raises(InvalidStateError) as e:
        Algorithm.from_checkpoint(bad)
    assert str(bad) in str(e.value) and "'default_policy'" in str(e.value) and "fcnet_activation" in str(e.value)
    live = _ppo()
    live.train()
    before = _policy_state(live)
    with pytest.raises(InvalidStateError, match="fcnet_activation"):
        live.restore(bad)
    assert_tree_equal(_policy_state(live), before, tuples_as_lists=False)
    live.stop()


def test_policy_overrides_are_what_the_algorithm_gives_and_every_loader_builds_them(tmp_path):
    """A PolicySpec's model override legitimately differs from the algorithm's model: every loader
    builds the same network from such a checkpoint."""
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0": PolicySpec(),
                                   "p1": PolicySpec(config={"model": {"fcnet_hiddens": [8],
                                                                      "fcnet_activation": "relu"}})},
                         policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
            .training(**_SMALL).reporting(log_results=False).debugging(seed=1).build())
    path = algo.save(tmp_path / "ma", format="msgpack").checkpoint.path
    algo.stop()
    mapping = {"policy_mapping_fn": lambda aid, *a, **k: f"p{aid}"}
    restored = Algorithm.from_checkpoint(path, **mapping)
    assert restored.get_policy("p1").config["model"]["fcnet_activation"] == "relu"
    obs = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    alone = Policy.from_checkpoint(Path(path) / "policies" / "p1")
    assert np.array_equal(restored.get_policy("p1").compute_actions(obs, explore=False)[0],
                          alone.compute_actions(obs, explore=False)[0])
    restored.stop()


def test_a_served_policy_acts_as_the_algorithm_restored_from_the_same_checkpoint(trained):
    obs = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    algo = Algorithm.from_checkpoint(trained)
    assert np.array_equal(algo.get_policy().compute_actions(obs, explore=False)[0],
                          load_policy(trained).compute_actions(obs)[0])
    algo.stop()


# -- optimizer states ------------------------------------------------------------------------

def _arr(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, np.float32)


_BAD_OPTIMIZERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "moments of another shape": lambda o: o["state"].update(
        {i: {"step": np.float32(3), "exp_avg": _arr((3,)), "exp_avg_sq": _arr((3,))} for i in o["state"]}),
    "moments that are numbers": lambda o: o["state"].update(
        {i: {"step": 5, "exp_avg": 1, "exp_avg_sq": 2} for i in o["state"]}),
    "lr a string": lambda o: o["param_groups"][0].update(lr="fast"),
    "one beta": lambda o: o["param_groups"][0].update(betas=[0.9]),
    "a param group too many": lambda o: o["param_groups"].append(dict(o["param_groups"][0])),
    "a parameter id twice": lambda o: o["param_groups"][0].update(params=[0] * len(o["param_groups"][0]["params"])),
    "amsgrad without its moment": lambda o: o["param_groups"][0].update(amsgrad=True),
    "a state of no parameter": lambda o: o["state"].update({99: dict(o["state"][0])}),
}


@pytest.mark.parametrize("case", sorted(_BAD_OPTIMIZERS))
def test_an_optimizer_state_that_does_not_fit_is_refused_when_read(trained, tmp_path, case):
    """It was taken as it was, and the first train() raised a raw RuntimeError, ValueError or
    AttributeError naming no file; a live algorithm that restored it was broken."""
    bad = _rewritten(trained, tmp_path / "bad",
                     lambda s, p: _BAD_OPTIMIZERS[case](p["default_policy"]["optimizer"]))
    with pytest.raises(InvalidStateError) as e:
        Algorithm.from_checkpoint(bad)
    assert str(bad) in str(e.value) and "optimizer 'default'" in str(e.value)
    live = _ppo()
    live.train()
    before = _policy_state(live)
    with pytest.raises(InvalidStateError):
        live.restore(bad)
    assert_tree_equal(_policy_state(live), before, tuples_as_lists=False)
    live.train()  # as it was: it trains on
    live.stop()


def test_a_policy_with_an_optimizer_state_that_does_not_fit_is_refused(trained, tmp_path):
    bad = _rewritten(trained, tmp_path / "bad",
                     lambda s, p: p["default_policy"]["optimizer"]["param_groups"][0].update(lr="fast"))
    with pytest.raises(InvalidStateError, match="lr"):
        Policy.from_checkpoint(bad / "policies" / "default_policy")


def test_a_valid_optimizer_state_of_another_torch_still_loads(trained, tmp_path):
    """Keys a torch version adds (or lacks), a step as a number, str parameter ids: accepted."""
    def older(state: dict[str, Any], policies: dict[str, Any]) -> None:
        opt = policies["default_policy"]["optimizer"]
        for key in ("fused", "foreach", "decoupled_weight_decay", "capturable"):
            opt["param_groups"][0].pop(key, None)
        opt["param_groups"][0]["a_later_flag"] = False
        opt["state"] = {str(i): {**s, "step": 2} for i, s in opt["state"].items()}

    algo = Algorithm.from_checkpoint(_rewritten(trained, tmp_path / "older", older))
    algo.train()
    algo.stop()


def test_flat_adam_leaves_a_state_it_cannot_lay_out_to_torch():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    opt.state[model.weight] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3),
                               "exp_avg_sq": torch.zeros(3)}
    opt.state[model.bias] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2)}
    assert flat_adam(opt) is None


def test_a_tf2_policy_refuses_an_optimizer_state_that_is_not_one():
    pytest.importorskip("tensorflow")
    from amber.policy.tf_policy import PPOTFPolicy

    spaces = (gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2))
    policy = PPOTFPolicy(*spaces, {"model": {"fcnet_hiddens": [8]}, "seed": 1})
    before = policy.get_weights()
    bad = {"state": {}, "param_groups": [{"lr": "fast", "params": [0]}]}
    with pytest.raises(ValueError, match="lr"):
        policy.set_state({"weights": {k: v + 1 for k, v in before.items()}, "optimizer": bad})
    assert all(np.array_equal(policy.get_weights()[k], v) for k, v in before.items())  # nothing changed


# -- a checkpoint's storage_path -------------------------------------------------------------

def test_a_checkpoint_never_chooses_where_the_loader_saves(tmp_path):
    """A checkpoint's config.storage_path was adopted: the next algo.save() wrote there (any fsspec
    URL: an ftp:// URL made amber log in to the host it names)."""
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    algo = _ppo(storage_path=str(theirs))
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.stop()
    restored = Algorithm.from_checkpoint(path)
    assert restored.config.storage_path is None
    saved = restored.save().checkpoint.path
    assert not theirs.exists() and Path(saved).parent == Path(restored.logdir)
    restored.config.checkpointing(storage_path=str(mine))  # the loader's own choice
    assert Path(restored.save().checkpoint.path).is_relative_to(mine)
    restored.stop()


# -- the caller's arguments ------------------------------------------------------------------

def test_policies_to_train_naming_a_policy_not_loaded_is_the_callers_error(tmp_path):
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"pol0", "pol1"}, policy_mapping_fn=lambda aid, *a, **k: f"pol{aid}")
            .training(**_SMALL).reporting(log_results=False).build())
    path = algo.save(tmp_path / "ma", format="msgpack").checkpoint.path
    algo.stop()
    only = {"policy_ids": ["pol0"], "policy_mapping_fn": lambda *a, **k: "pol0"}
    with pytest.raises(ValueError, match=r"policies_to_train.*'pol1'") as e:
        Algorithm.from_checkpoint(path, policies_to_train=["pol0", "pol1"], **only)
    assert not isinstance(e.value, CheckpointError)
    with pytest.raises(TypeError, match="policies_to_train"):
        Algorithm.from_checkpoint(path, policies_to_train="pol0", **only)
    restored = Algorithm.from_checkpoint(path, policies_to_train=["pol0"], **only)
    assert restored.policies_to_train == ["pol0"]
    restored.stop()


def test_an_unknown_format_names_the_destination(tmp_path):
    algo = _ppo()
    with pytest.raises(UnknownFormatError) as e:
        algo.save(tmp_path / "a", format="nope")
    assert e.value.path == str(tmp_path / "a") and str(tmp_path / "a") in str(e.value)
    algo.stop()
    with pytest.raises(UnknownFormatError) as e:
        amber.save({"a": 1}, tmp_path / "b", format="nope")
    assert e.value.path == str(tmp_path / "b") and str(tmp_path / "b") in str(e.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_policy_state_copy_is_unchanged_by_the_check(trained):
    """The check reads the optimizer tree; it keeps what it was given as it was."""
    state = read_checkpoint(trained / "policies" / "default_policy").state
    kept = copy.deepcopy(state)
    Policy.from_state(state)
    assert_tree_equal(state, kept, tuples_as_lists=False)


# -- optimizer states that torch takes, then fails or poisons the weights with ------------------

def _each_state(o: dict[str, Any], key: str, fill: float) -> None:
    for s in o["state"].values():
        s[key] = np.full_like(s[key], fill)


_HARMFUL_OPTIMIZERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "no lr": lambda o: o["param_groups"][0].pop("lr"),
    "no betas": lambda o: o["param_groups"][0].pop("betas"),
    "no eps": lambda o: o["param_groups"][0].pop("eps"),
    "no weight_decay": lambda o: o["param_groups"][0].pop("weight_decay"),
    "exp_avg NaN": lambda o: _each_state(o, "exp_avg", np.nan),
    "exp_avg inf": lambda o: _each_state(o, "exp_avg", -np.inf),
    "exp_avg_sq negative": lambda o: _each_state(o, "exp_avg_sq", -1.0),
    "exp_avg_sq NaN": lambda o: _each_state(o, "exp_avg_sq", np.nan),
}


@pytest.mark.parametrize("case", sorted(_HARMFUL_OPTIMIZERS))
def test_an_optimizer_state_missing_settings_or_with_bad_moments_is_refused(trained, tmp_path, case):
    """A group without lr, betas, eps or weight_decay loaded and train() raised a raw KeyError; NaN
    moments or a negative exp_avg_sq loaded and one train() made the weights non-finite."""
    bad = _rewritten(trained, tmp_path / "bad",
                     lambda s, p: _HARMFUL_OPTIMIZERS[case](p["default_policy"]["optimizer"]))
    with pytest.raises(InvalidStateError) as e:
        Algorithm.from_checkpoint(bad)
    assert str(bad) in str(e.value) and "optimizer 'default'" in str(e.value)
    assert case.split()[-1 if case.startswith("no") else 0] in str(e.value)


def test_another_optimizers_group_needs_only_lr():
    """A subclass's SGD (no betas, eps) is not held to Adam's settings; its lr is still needed."""
    from amber.policy.optimizer_trees import check_optimizer_tree

    sgd = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    tree = {"state": {}, "param_groups": [dict(g) for g in sgd.state_dict()["param_groups"]]}
    check_optimizer_tree(tree, "sgd", [[(2, 3), (2,)]])
    tree["param_groups"][0].pop("lr")
    with pytest.raises(ValueError, match="lacks lr"):
        check_optimizer_tree(tree, "sgd", [[(2, 3), (2,)]])
