"""Agent ids as msgpack map keys: numpy integers are kept (as int), other ids are refused at save
time with a message pointing to a format that holds any object (pickle), never written as a checkpoint that cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest

import amber
import amber.plugins.msgpack_fmt as msgpack_fmt
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.envs import MultiAgentEnv
from amber.errors import UnserializableStateError
from amber.layout import Sink
from amber.plugins.msgpack_fmt.codec import decode_document

_IDS = {"int": [0, 1], "np.int64": [np.int64(0), np.int64(1)], "tuple": [("a", 0), ("a", 1)],
        "None": [None, 1]}


class TurnTaking(MultiAgentEnv):
    """Two agents that take turns, so one always has a step pending (waiting for its next
    observation); agent ids of the kind ``env_config["ids"]`` names."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.possible_agents = list(_IDS[(config or {}).get("ids", "int")])
        self.agents: list[Any] = []
        self.observation_space = gym.spaces.Box(-1.0, 100.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        self.t, self.agents = 0, list(self.possible_agents)
        return {self.agents[0]: np.zeros(2, np.float32)}, {}

    def step(self, actions: dict) -> tuple[dict, dict, dict, dict, dict]:
        assert all(a in self.agents for a in actions), actions
        self.t += 1
        done = self.t >= 7
        movers = self.agents if done else [self.agents[self.t % 2]]
        obs = {a: np.array([self.t, self.agents.index(a)], np.float32) for a in movers}
        rewards = {a: float(actions[a]) for a in actions}
        terminateds = {**{a: done for a in obs}, "__all__": done}
        return obs, rewards, terminateds, {"__all__": False}, {}

    def get_state(self) -> dict[str, Any]:
        return {"t": self.t, "started": bool(self.agents)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.t, self.agents = state["t"], list(self.possible_agents) if state["started"] else []


def one_policy(agent_id: Any, *args: Any, **kwargs: Any) -> str:
    return "p"


amber.register_class(TurnTaking, name="tests.msgpack_agent_ids.TurnTaking")
amber.register_class(one_policy, name="tests.msgpack_agent_ids.one_policy")


def trained(ids: str) -> Algorithm:
    algo = (PPOConfig().environment(TurnTaking, env_config={"ids": ids})
            .multi_agent(policies={"p"}, policy_mapping_fn=one_policy)
            .training(train_batch_size=30, minibatch_size=15, num_epochs=1, model={"fcnet_hiddens": [16]})
            .reporting(log_results=False).debugging(seed=3).build())
    algo.train()
    return algo


def weights(algo: Algorithm) -> list[np.ndarray]:
    return [np.array(w) for w in algo.get_policy("p").get_weights().values()]


def test_numpy_integer_agent_ids_resume_from_msgpack(tmp_path):
    algo = trained("np.int64")
    saved = algo.env_runner.get_state()["slots"][0]
    assert saved["pending"] and type(next(iter(saved["pending"]))) is np.int64  # an episode mid-way
    msgpack_path = algo.save(tmp_path / "m", format="msgpack").checkpoint.path
    pickle_path = algo.save(tmp_path / "p", format="pickle").checkpoint.path
    algo.stop()

    restored = Algorithm.from_checkpoint(msgpack_path)
    slot = restored.env_runner.get_state()["slots"][0]
    for field in ("obs", "mapping", "agent_returns", "pending"):
        assert list(slot[field]) == list(saved[field])  # equal ids, in order...
        assert all(type(a) is int for a in slot[field])  # ...as Python ints
    assert slot["ep_len"] == saved["ep_len"]
    for agent, step in saved["pending"].items():  # the env's own np.int64 ids find the pending steps
        assert slot["pending"][agent]["action"] == step["action"]
        np.testing.assert_array_equal(slot["pending"][agent]["obs"], step["obs"])

    twin = Algorithm.from_checkpoint(pickle_path)  # the format that keeps np.int64 as it is
    restored.train()
    twin.train()
    for got, want in zip(weights(restored), weights(twin), strict=True):
        np.testing.assert_array_equal(got, want)  # the same training, step for step
    restored.stop()
    twin.stop()


@pytest.mark.parametrize("ids", ["tuple", "None"])
def test_other_agent_ids_are_refused_at_save_naming_pickle(tmp_path, ids):
    algo = trained(ids)
    with pytest.raises(UnserializableStateError) as info:
        algo.save(tmp_path / "m", format="msgpack")
    message = str(info.value)
    assert "components.env_runner.slots[0]" in message and "format that holds any object" in message
    assert not (tmp_path / "m").exists()
    path = algo.save(tmp_path / "p", format="pickle").checkpoint.path  # which keeps them
    algo.stop()
    restored = Algorithm.from_checkpoint(path)
    assert list(restored.env_runner.get_state()["slots"][0]["mapping"]) == _IDS[ids]
    restored.stop()


# -- the format itself, below the engine's checks: both of its encoding paths -------------------


class _Source:
    def __init__(self, path: Path) -> None:
        self.path = path

    def has(self, name: str) -> bool:
        return False


def written(state: Any, tmp_path: Path) -> Any:
    sink = Sink(tmp_path, f"s{len(list(tmp_path.iterdir()))}", ".msgpck", {})
    msgpack_fmt.write(state, sink)
    sink.finish()
    return decode_document(memoryview(sink.path.read_bytes()), _Source(sink.path))


# "whole": no arrays below, msgpack packs the map in one call; "split": written item by item
PATHS = {"whole": lambda key: {"m": {key: "p", "n": [1.5]}},
         "split": lambda key: {"m": {key: np.zeros(2), "n": [1.5]}}}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key", [np.int64(-3), np.int32(2), np.uint8(1), np.uint64(2**64 - 1)], ids=repr)
def test_numpy_integer_keys_are_written_as_ints(tmp_path, path, key):
    state = PATHS[path](key)
    got = written(state, tmp_path)
    assert list(got["m"]) == [int(key), "n"] and type(next(iter(got["m"]))) is int
    assert got["m"][key] is not None  # found by the numpy id itself
    raw = msgpack.unpackb((tmp_path / "s0.msgpck").read_bytes(), strict_map_key=False)
    assert list(raw["m"]) == [int(key), "n"]  # a plain msgpack int, not a numpy scalar's map


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("key", [("a", 0), None, 1.5, True, np.float64(1.0), np.bool_(True), b"k",
                                 frozenset({1}), 2**64], ids=repr)
def test_other_keys_are_refused_naming_the_key_path_and_pickle(tmp_path, path, key):
    with pytest.raises(UnserializableStateError) as info:
        written({"top": [PATHS[path](key)]}, tmp_path)
    message = str(info.value)
    assert message.startswith("cannot write top[0].m in format 'msgpack'")
    assert repr(key) in message and "format='pickle'" in message
