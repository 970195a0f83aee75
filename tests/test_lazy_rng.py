"""An algorithm's numpy and Python generators are made on first use, with the same draws as ever.

A fresh algorithm draws what ``np.random.default_rng(seed)`` and ``random.Random(seed)`` draw; a
restored one continues where the saved one was, whether its generators were made before the
restore or after it (a restore that only serves policies never makes them); a malformed saved
generator state is refused by the restore, naming the component, and changes nothing.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.algorithms.training_state import LazyRNG
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.envs.multi_agent import MultiAgentCartPole
from amber.errors import CheckpointError
from tests.treeutil import assert_tree_equal

SMALL = {"train_batch_size": 40, "minibatch_size": 20, "num_epochs": 1, "model": {"fcnet_hiddens": [8]}}


def by_agent(agent_id: Any, episode: Any = None, worker: Any = None, **kw: Any) -> str:
    return f"p{agent_id}"


amber.register_class(by_agent, name="tests.lazy_rng.by_agent")


def _single(seed: int = 7) -> Any:
    return PPOConfig().environment("CartPole-v1").training(**SMALL).debugging(seed=seed).build()


def _pair(seed: int = 7) -> Any:
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .training(**SMALL).debugging(seed=seed)
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=by_agent).build())


def _draws(algo: Any) -> tuple[list[float], list[float]]:
    return algo.np_rng.random(5).tolist(), [algo.py_rng.random() for _ in range(5)]


def _generator_states(algo: Any) -> tuple[Any, Any]:
    return algo.np_rng.bit_generator.state, algo.py_rng.getstate()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, tuple[list[float], list[float]]]:
    """A trained two-policy algorithm's checkpoint, and what its generators draw next."""
    algo = _pair()
    algo.train()  # PPO's minibatches draw from np_rng
    algo.py_rng.random()  # moved on from its seed
    path = algo.save(tmp_path_factory.mktemp("lazy") / "ck", format="msgpack").checkpoint.path
    after = _draws(algo)
    algo.stop()
    return path, after


def test_a_fresh_algorithm_draws_what_generators_of_its_seed_draw():
    algo = _single(seed=11)
    assert not algo._np_rng.made and not algo._py_rng.made
    numpy_draws, python_draws = _draws(algo)
    assert numpy_draws == np.random.default_rng(11).random(5).tolist()
    python_rng = random.Random(11)
    assert python_draws == [python_rng.random() for _ in range(5)]
    algo.stop()


def test_a_restored_algorithm_continues_where_the_saved_one_was(trained):
    path, after = trained
    restored = Algorithm.from_checkpoint(path)
    assert _draws(restored) == after
    restored.stop()


def test_a_subset_restore_makes_the_generators_on_first_use_then_continues(trained):
    path, after = trained
    restored = Algorithm.from_checkpoint(path, policy_ids=["p0"], policy_mapping_fn=lambda a, *x, **k: "p0")
    assert list(restored.policies) == ["p0"]
    assert not restored._np_rng.made and not restored._py_rng.made
    action, _, _ = restored.get_policy("p0").compute_single_action(np.zeros(4, np.float32), explore=False)
    assert action in (0, 1) and not restored._np_rng.made  # serving draws from neither
    numpy_next = restored.np_rng.random(5).tolist()
    assert restored._np_rng.made and not restored._py_rng.made
    assert (numpy_next, [restored.py_rng.random() for _ in range(5)]) == after
    restored.stop()


def test_saving_a_restored_algorithm_before_its_generators_are_made_saves_their_restored_states(
        trained, tmp_path):
    path, _ = trained
    restored = Algorithm.from_checkpoint(path, policy_ids=["p0", "p1"], policy_mapping_fn=by_agent)
    again = restored.save(tmp_path / "again", format="msgpack").checkpoint.path
    restored.stop()
    want = read_checkpoint(path, migrate=False).state["components"]
    got = read_checkpoint(again, migrate=False).state["components"]
    for key in ("rng.numpy", "rng.python"):
        assert_tree_equal(got[key], want[key], tuples_as_lists=False, path=key)


def _set_numpy_kind(c: dict[str, Any]) -> None:  # a valid state of another kind of generator
    c["rng.numpy"]["bit_generator"] = np.random.SFC64(1).state


def _set_numpy_unknown(c: dict[str, Any]) -> None:
    c["rng.numpy"]["bit_generator"]["bit_generator"] = "NotAGenerator"


def _set_numpy_range(c: dict[str, Any]) -> None:
    c["rng.numpy"]["bit_generator"]["state"]["inc"] = f"int:{2**128}"


def _set_numpy_shape(c: dict[str, Any]) -> None:
    c["rng.numpy"]["bit_generator"]["state"] = {"state": [1, 2], "inc": 3}


def _set_python_kind(c: dict[str, Any]) -> None:
    c["rng.python"]["version"] = 2


def _set_python_range(c: dict[str, Any]) -> None:
    c["rng.python"]["mt"] = np.full(625, 2**32, np.int64)


def _set_python_position(c: dict[str, Any]) -> None:
    c["rng.python"]["mt"] = np.full(625, 625, np.uint32)


def _set_python_shape(c: dict[str, Any]) -> None:
    c["rng.python"]["mt"] = np.zeros(624, np.uint32)


def _set_python_gauss(c: dict[str, Any]) -> None:
    c["rng.python"]["gauss_next"] = "0.5"


BAD = {"numpy kind": ("rng.numpy", _set_numpy_kind), "numpy unknown kind": ("rng.numpy", _set_numpy_unknown),
       "numpy range": ("rng.numpy", _set_numpy_range), "numpy shape": ("rng.numpy", _set_numpy_shape),
       "python kind": ("rng.python", _set_python_kind), "python range": ("rng.python", _set_python_range),
       "python position": ("rng.python", _set_python_position),
       "python shape": ("rng.python", _set_python_shape), "python gauss": ("rng.python", _set_python_gauss)}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("subset", [False, True], ids=["whole", "subset"])
def test_a_malformed_saved_generator_state_is_refused_by_the_restore(trained, tmp_path, bad, subset):
    path, _ = trained
    key, edit = BAD[bad]
    ckpt = read_checkpoint(path, migrate=False)
    edit(ckpt.state["components"])
    policies = {pid: p.state for pid, p in ckpt.policies.items()}
    write_checkpoint(tmp_path / "bad", type=ckpt.type, state=ckpt.state, policies=policies, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    kw: dict[str, Any] = {"policy_ids": ["p0"], "policy_mapping_fn": lambda a, *x, **k: "p0"} if subset else {}
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        Algorithm.from_checkpoint(tmp_path / "bad", **kw)


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("made", [False, True], ids=["not-made", "made"])
def test_a_refused_generator_state_leaves_the_algorithm_as_it_was(trained, bad, made):
    path, after = trained
    algo = Algorithm.from_checkpoint(path, policy_ids=["p0", "p1"], policy_mapping_fn=by_agent)
    if made:
        algo.np_rng, algo.py_rng  # noqa: B018 (made before the restore)
    state = algo.get_state()  # makes them: a set_state keeps the state it may have to put back
    before = _generator_states(algo)
    key, edit = BAD[bad]
    edit(state["algorithm"]["components"])
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        algo.set_state(state)
    assert_tree_equal(_generator_states(algo), before, tuples_as_lists=False)
    assert _draws(algo) == after
    algo.stop()


def test_a_state_restored_before_the_generator_is_made_is_applied_when_it_is():
    made: list[int] = []
    rng = LazyRNG(random.Random, lambda: made.append(1) or random.Random(3))
    rng.defer(lambda g: g.seed(4))
    rng.defer(lambda g: g.seed(5))  # the later restore wins
    assert not rng.made and made == []
    assert rng.live().random() == random.Random(5).random() and rng.made
    assert rng.live() is rng.live() and made == [1]
    rng.defer(lambda g: g.seed(6))  # made: applied now
    assert rng.live().random() == random.Random(6).random()
