"""PettingZoo parallel envs through amber.envs.PettingZooEnv, and gymnasium "module:EnvId" ids."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("pettingzoo")
simple_spread_v3 = pytest.importorskip("mpe2.simple_spread_v3")

import amber  # noqa: E402
from amber.algorithms.algorithm import Algorithm  # noqa: E402
from amber.algorithms.ppo import PPOConfig  # noqa: E402
from amber.envs import PettingZooEnv, make_env, register_env  # noqa: E402
from amber.errors import CheckpointError, UnregisteredNameError  # noqa: E402

TINY = {"train_batch_size": 64, "minibatch_size": 32, "num_epochs": 1, "model": {"fcnet_hiddens": [16]}}


def spread(cfg):
    return PettingZooEnv(simple_spread_v3.parallel_env(**{"N": 2, "max_cycles": 10, **cfg}))


def by_agent(agent_id, episode, worker, **kw):
    """agent_0 → p0, the others → p1."""
    return "p0" if agent_id == "agent_0" else "p1"


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path / "results"))


def test_importing_amber_envs_does_not_import_pettingzoo():
    code = "import sys, amber, amber.envs; assert 'pettingzoo' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adapter_api_against_simple_spread():
    env = spread({})
    assert env.possible_agents == ["agent_0", "agent_1"] and env.agents == []
    space = env.get_observation_space("agent_0")
    assert space.shape == (12,) and env.get_action_space("agent_1").n == 5
    obs, infos = env.reset(seed=3)
    assert set(obs) == set(infos) == {"agent_0", "agent_1"} and obs["agent_0"] in space
    again, _ = spread({}).reset(seed=3)
    assert all(np.array_equal(obs[a], again[a]) for a in obs)  # reset(seed=) seeds the env
    for t in range(10):
        obs, rew, te, tr, _ = env.step({a: 0 for a in env.agents})
        assert set(obs) == set(rew) == {"agent_0", "agent_1"} and all(isinstance(r, float) for r in rew.values())
        assert te["__all__"] is False and tr["__all__"] is (t == 9)
    assert env.agents == [] and all(tr.values())
    with pytest.raises(ValueError, match="done or unknown"):
        env.step({"agent_0": 0})
    env.close()


def test_adapter_refuses_what_it_cannot_wrap():
    with pytest.raises(TypeError, match="register a creator"):
        PettingZooEnv({"N": 2})
    with pytest.raises(TypeError, match="AEC"):
        PettingZooEnv(simple_spread_v3.env())
    with pytest.raises(TypeError, match="only used with a creator"):
        PettingZooEnv(simple_spread_v3.parallel_env(), env_config={"N": 2})
    creator = PettingZooEnv(lambda cfg: simple_spread_v3.parallel_env(**cfg), env_config={"N": 3})
    assert len(creator.possible_agents) == 3


def test_ppo_trains_saves_and_restores_on_pettingzoo(tmp_path):
    register_env("pz_spread", spread)
    amber.register_class(by_agent, name="test_pettingzoo:by_agent")
    config = (PPOConfig().environment("pz_spread").training(**TINY).debugging(seed=0)
              .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=by_agent))
    algo = config.build()
    algo.train()
    with pytest.warns(UserWarning, match="no plugin captures the state of env"):  # documented
        path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    clone = Algorithm.from_checkpoint(path)
    assert clone.iteration == algo.iteration == 1 and sorted(clone.policies) == ["p0", "p1"]
    for pid in algo.policies:
        a, b = algo.policies[pid].get_weights(), clone.policies[pid].get_weights()
        assert all(np.array_equal(a[k], b[k]) for k in a)
    result = clone.train()
    assert clone.iteration == 2 and result is not None
    algo.stop()
    clone.stop()


# -- gymnasium "module:EnvId" ids ----------------------------------------------------------

MODULE = '''
import pathlib
import gymnasium
pathlib.Path({marker!r}).write_text("imported")
gymnasium.register(id="{env_id}", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv",
                   max_episode_steps=50)
'''


@pytest.fixture
def env_module(tmp_path, monkeypatch, request):
    """A module on sys.path that registers a gymnasium id and leaves a marker file when imported."""
    name = f"amber_test_envmod_{request.node.name[-12:].replace('[', '_').replace(']', '_')}"
    env_id = f"{name.title().replace('_', '')}-v0"
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE.format(marker=str(marker), env_id=env_id)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, env_id, marker
    sys.modules.pop(name, None)
    import gymnasium

    gymnasium.registry.pop(env_id, None)


def test_module_env_id_in_code_imports_the_module(env_module):
    module, env_id, marker = env_module
    env = make_env(f"{module}:{env_id}")
    assert marker.exists() and module in sys.modules
    assert env.observation_space.shape == (4,)
    algo = PPOConfig().environment(f"{module}:{env_id}").training(**TINY).debugging(seed=0).build()
    algo.train()
    algo.stop()


def _saved_with_module_env(env_module, tmp_path):
    module, env_id, marker = env_module
    algo = PPOConfig().environment(f"{module}:{env_id}").training(**TINY).debugging(seed=0).build()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.stop()
    return path


def test_loading_never_imports_a_module_named_by_the_checkpoint(env_module, tmp_path):
    module, env_id, marker = env_module
    path = _saved_with_module_env(env_module, tmp_path)
    sys.modules.pop(module)  # a fresh process: the module was never imported
    import gymnasium

    gymnasium.registry.pop(env_id)
    marker.unlink()
    with pytest.raises(UnregisteredNameError, match=f"import {module}") as info:
        Algorithm.from_checkpoint(path)
    assert isinstance(info.value, CheckpointError) and info.value.path is not None
    assert not marker.exists() and module not in sys.modules
    clone = Algorithm.from_checkpoint(path, env="CartPole-v1")  # or pass env=
    assert not marker.exists()
    clone.stop()


def test_loading_accepts_a_module_id_the_user_registered(env_module, tmp_path):
    module, env_id, marker = env_module
    path = _saved_with_module_env(env_module, tmp_path)  # the module is imported (by the save's build)
    clone = Algorithm.from_checkpoint(path)
    assert clone.config.env == f"{module}:{env_id}"
    clone.train()
    clone.stop()


def test_loading_refuses_a_module_id_whose_env_is_not_registered(tmp_path):
    for env in ("os:system", "fuzz_marker:Env-v0", "fuzz_marker:CartPole-v1"):
        with pytest.raises(UnregisteredNameError, match="never") as info:
            amber.envs.check_saved_env(env, tmp_path / "ck")
        assert info.value.path == str(tmp_path / "ck")
    assert "fuzz_marker" not in sys.modules
    amber.envs.check_saved_env("gymnasium.envs.classic_control:CartPole-v1", tmp_path / "ck")
    amber.envs.check_saved_env("CartPole-v1", tmp_path / "ck")  # plain ids are make_env's to check
