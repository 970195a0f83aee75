"""What ``Algorithm.from_checkpoint``'s arguments mean: ids given as any iterable, and a mapping
given again for one the checkpoint could not store."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.envs import MultiAgentCartPole


def _config(mapping):
    return (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .training(train_batch_size=200, minibatch_size=50, num_epochs=1, model={"fcnet_hiddens": [8]})
        .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=mapping)
        .debugging(seed=3)
    )


def _weights(algo):
    return {pid: algo.get_policy(pid).get_weights() for pid in sorted(algo.policies)}


def _same(a, b):
    return a.keys() == b.keys() and all(
        a[p].keys() == b[p].keys() and all(np.array_equal(a[p][k], b[p][k]) for k in a[p]) for p in a)


@pytest.mark.parametrize("ids", [lambda: (p for p in ["p1"]), lambda: iter(["p1"]), lambda: {"p1": 0}.keys()],
                         ids=["generator", "iterator", "keys-view"])
def test_policy_ids_may_be_any_iterable(ids, tmp_path):
    """The signature says Iterable[str]: a generator was read once to pick the files, and the
    algorithm then built from it again held no policy at all."""
    algo = _config(lambda agent_id, *a, **k: f"p{agent_id}").build()
    path = algo.save(tmp_path / "ck").checkpoint.path
    want = algo.get_policy("p1").get_weights()
    algo.stop()
    restored = Algorithm.from_checkpoint(path, policy_ids=ids(), policy_mapping_fn=lambda *a, **k: "p1")
    try:
        assert sorted(restored.policies) == ["p1"]
        assert _same({"p1": restored.get_policy("p1").get_weights()}, {"p1": want})
        restored.train()
    finally:
        restored.stop()


def test_a_mapping_msgpack_could_not_store_given_again_resumes_bit_exactly(tmp_path):
    """msgpack stores an unregistered mapping as a placeholder and the load asks for it again:
    given again, it is the saved mapping, so the running episodes continue (they restarted, and
    the resumed run drifted from the uninterrupted one)."""
    def mapping(agent_id, *a, **k):
        return f"p{agent_id}"

    algo = _config(mapping).build()
    algo.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the save warns that it cannot store the mapping)
        path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    restored = Algorithm.from_checkpoint(path, policy_mapping_fn=mapping)
    try:
        algo.train()
        restored.train()
        assert _same(_weights(algo), _weights(restored))
    finally:
        algo.stop()
        restored.stop()
