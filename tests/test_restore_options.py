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


def test_msgpack_refuses_a_policy_class_it_could_not_store_before_writing(tmp_path):
    """A class with no registered name is a placeholder only where from_checkpoint can be given it
    again (mapping, env, callbacks): an unregistered policy class was saved with a warning, and the
    checkpoint could never be loaded (no argument gives a policy class back). The save fails,
    names the class and the ways out, and writes nothing; registered, it saves and loads."""
    import amber
    from amber.errors import UnserializableStateError
    from amber.policy.policy import PolicySpec
    from amber.policy.torch_policy import TorchPolicy

    class MyPolicy(TorchPolicy):
        pass

    def mapping(agent_id, *a, **k):
        return f"p{agent_id}"

    with_spec = _config(mapping).multi_agent(policies={"p0": PolicySpec(MyPolicy), "p1": PolicySpec()})
    added = _config(mapping).build()
    added.add_policy("mine", MyPolicy)
    for algo in (added, with_spec.build()):
        try:
            with pytest.raises(UnserializableStateError) as e:
                algo.save(tmp_path / "ck", format="msgpack")
        finally:
            algo.stop()
        message = str(e.value)
        assert "config.policies.mine.policy_class" in message or "config.policies.p0.policy_class" in message
        assert "amber.register_class(MyPolicy)" in message and "format='pickle'" in message
        assert not (tmp_path / "ck").exists()
    amber.register_class(MyPolicy, name="test_restore_options:MyPolicy")
    algo = with_spec.build()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the mapping is still a placeholder)
            path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path, policy_mapping_fn=mapping)
    try:
        assert type(restored.get_policy("p0")) is MyPolicy
    finally:
        restored.stop()


def test_a_placeholder_is_asked_for_by_a_real_keyword_or_none():
    """Each key where a placeholder may be saved is given again by a real keyword of
    from_checkpoint; for any other (a policy class in an older checkpoint) the message suggests
    no keyword (it said ``policies.mine=...``), nor does Policy.from_checkpoint's."""
    import inspect

    from amber.algorithms.saved_config import GIVEN_AGAIN, config_from_state
    from amber.errors import UnregisteredNameError
    from amber.names import resolve
    from amber.state import Ref

    assert set(GIVEN_AGAIN.values()) <= set(inspect.signature(Algorithm.from_checkpoint).parameters)
    own = {"algorithm_class": Ref("amber.PPO"),
           "config": {"policy_mapping_fn": Ref("?mapping"), "policies": {"mine": {"policy_class": Ref("?MyPolicy")}}}}
    with pytest.raises(UnregisteredNameError, match=r"from_checkpoint\(path, policy_mapping_fn=\.\.\.\)"):
        config_from_state(own, path="ck", pm=None)
    own["config"]["policy_mapping_fn"] = None
    with pytest.raises(UnregisteredNameError) as e:
        config_from_state(own, path="ck", pm=None)
    assert "policies.mine=" not in str(e.value) and "policy_ids=[...]" in str(e.value)
    with pytest.raises(UnregisteredNameError) as e:
        resolve("?MyPolicy", what="policy class", path="ck")
    assert "pass it again" not in str(e.value) and "amber.register_class" in str(e.value)


def test_from_checkpoint_and_restore_take_a_save_result_and_an_object_whose_path_is_a_path(tmp_path):
    """algo.save()'s result itself (RLlib code passes it around), and a result-like object holding a
    pathlib.Path, were raw TypeErrors ('expected str, bytes or os.PathLike object')."""
    from pathlib import Path
    from types import SimpleNamespace

    algo = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}).build()
    result = algo.save(tmp_path / "ck")
    restored = Algorithm.from_checkpoint(result)
    assert restored.iteration == algo.iteration
    restored.restore(SimpleNamespace(path=Path(result.checkpoint.path)))
    restored.stop()
    algo.stop()
