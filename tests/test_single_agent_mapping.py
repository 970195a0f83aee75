"""A single-agent env whose policy is not ``"default_policy"`` (RLlib's habit:
``.multi_agent(policies={"main"}, policy_mapping_fn=...)`` on a gymnasium env): sampling uses the
mapping function (given RLlib's agent id ``"agent0"``) or the one policy there is, an RLlib
checkpoint of that shape trains on, and ``amber evaluate`` plays that policy."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.cli import cli
from amber.envs.env_runner import EnvRunner

PPO_FIXTURE = Path(__file__).parent / "fixtures" / "rllib-2.10" / "ppo_msgpack"
_SMALL = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


class _Policy:
    """Random CartPole actions; counts its calls."""

    def __init__(self, seed: int) -> None:
        self.rng, self.calls = np.random.default_rng(seed), 0

    def compute_actions(self, obs_batch, state_batches=None, *, explore=None, **kw):
        self.calls += 1
        return self.rng.integers(0, 2, size=len(obs_batch)), [], {}


def test_runner_maps_a_single_agent_env_with_the_mapping_fn_given_rllibs_agent_id():
    seen = []

    def to_b(agent_id, episode, worker, **kw):
        seen.append(agent_id)
        return "b"

    pols = {"a": _Policy(0), "b": _Policy(1)}
    runner = EnvRunner("CartPole-v1", {}, 2, pols, to_b, seed=0)
    batches, metrics = runner.sample(60)
    runner.stop()
    assert list(batches) == ["b"] and pols["a"].calls == 0
    assert sum(len(f["obs"]) for f in batches["b"]) == 60
    assert set(seen) == {"agent0"}  # RLlib 2.10's id for a single-agent env's agent
    assert len(seen) == 2 + len(metrics["episode_returns"])  # once per agent per episode


def test_runner_without_a_mapping_plays_the_only_policy_whatever_its_id():
    runner = EnvRunner("CartPole-v1", {}, 1, {"main": _Policy(0)}, None, seed=0)
    batches, _ = runner.sample(10)
    assert list(batches) == ["main"]
    several = EnvRunner("CartPole-v1", {}, 1, {"b": _Policy(1), "a": _Policy(0)}, None, seed=0)
    assert list(several.sample(10)[0]) == ["b"]  # the first one (the one built first), not by name
    runner.stop()
    several.stop()


def _to_main(agent_id, episode, worker, **kw):
    return "main"


def test_single_agent_algorithm_whose_only_policy_is_not_default_policy_trains():
    algo = (PPOConfig().environment("CartPole-v1").multi_agent(policies={"main"}, policy_mapping_fn=_to_main)
            .training(**_SMALL).reporting(log_results=False).debugging(seed=0).build())
    result = algo.train()
    assert result["num_env_steps_sampled"] >= 64 and list(algo.policies) == ["main"]
    algo.stop()


def test_single_agent_algorithm_plays_the_policy_its_mapping_picks():
    algo = (PPOConfig().environment("CartPole-v1")
            .multi_agent(policies={"a", "main"}, policy_mapping_fn=_to_main)
            .training(**_SMALL).reporting(log_results=False).debugging(seed=0).build())
    before = {pid: algo.get_policy(pid).get_weights() for pid in ("a", "main")}
    algo.train()
    after = {pid: algo.get_policy(pid).get_weights() for pid in ("a", "main")}
    algo.stop()
    assert all(np.array_equal(before["a"][k], after["a"][k]) for k in before["a"])  # no sample for it
    assert not all(np.array_equal(before["main"][k], after["main"][k]) for k in before["main"])


def _rllib_single_agent_main(root: Path) -> Path:
    """RLlib's PPO CartPole checkpoint, its one policy renamed "main" (RLlib stores no mapping)."""
    import msgpack_numpy

    ck = root / "rllib_main"
    shutil.copytree(PPO_FIXTURE, ck)
    (ck / "policies" / "default_policy").rename(ck / "policies" / "main")
    manifest = json.loads((ck / "rllib_checkpoint.json").read_text())
    (ck / "rllib_checkpoint.json").write_text(json.dumps({**manifest, "policy_ids": ["main"]}))

    def edit(path: Path, change) -> None:
        tree = msgpack.unpackb(path.read_bytes(), object_hook=msgpack_numpy.decode, strict_map_key=False)
        change(tree)
        path.write_bytes(msgpack.packb(tree, default=msgpack_numpy.encode, use_bin_type=True))

    edit(ck / "algorithm_state.msgpck", lambda t: t["config"].update(policies=["main"]))
    edit(ck / "policies" / "main" / "policy_state.msgpck",
         lambda t: t["policy_spec"]["config"].update(__policy_id="main", policies=["main"]))
    return ck


def test_rllib_single_agent_checkpoint_whose_policy_is_main_loads_and_trains(tmp_path):
    pytest.importorskip("msgpack_numpy")
    ck = _rllib_single_agent_main(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RLlib settings not carried over
        algo = Algorithm.from_checkpoint(ck)
    assert list(algo.policies) == ["main"]
    algo.config.reporting(log_results=False)  # (its other settings: frozen, as the checkpoint's)
    algo.train()
    algo.stop()


def _evaluate(*args: str):
    return CliRunner().invoke(cli, ["evaluate", "--episodes", "1", *args])


def test_evaluate_plays_a_single_agent_checkpoint_whose_policy_is_not_default_policy(tmp_path):
    algo = (PPOConfig().environment("CartPole-v1").multi_agent(policies={"main"})
            .training(**_SMALL).reporting(log_results=False).build())
    algo.save(tmp_path / "one", format="msgpack")
    algo.stop()
    for extra in ([], ["--policy", "main"]):
        result = _evaluate(str(tmp_path / "one"), *extra)
        assert result.exit_code == 0 and "return mean" in result.output, result.output


def test_evaluate_of_several_single_agent_policies_without_a_mapping_plays_the_first(tmp_path):
    algo = (PPOConfig().environment("CartPole-v1").multi_agent(policies={"a", "b"})
            .training(**_SMALL).reporting(log_results=False).build())
    algo.save(tmp_path / "two", format="msgpack")
    algo.stop()
    result = _evaluate(str(tmp_path / "two"))
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert _evaluate(str(tmp_path / "two"), "--policy", "b").exit_code == 0

