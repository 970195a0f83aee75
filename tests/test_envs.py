"""Environments: making them, MultiAgentCartPole, env state capture, and the EnvRunner."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest

import amber
from amber.envs import MultiAgentCartPole, MultiAgentEnv, make_env, register_env
from amber.envs.env_runner import EnvRunner, probe_spaces
from amber.errors import CheckpointError
from amber.plugins.env_state import capture_env, restore_env
from amber.plugins.env_state.kinds import wrappers
from amber.state import validate_tree

# --------------------------------------------------------------------------- helpers


class FakePolicy:
    """A deterministic numpy policy with its own generator; counts its calls."""

    def __init__(self, action_space, seed=0):
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def compute_actions(self, obs_batch, state_batches=None, *, explore=None, **kw):
        self.calls += 1
        obs_batch = np.asarray(obs_batch, dtype=np.float32)
        b = len(obs_batch)
        if isinstance(self.action_space, gym.spaces.Box):
            shape = self.action_space.shape
            actions = (self.rng.normal(size=(b, *shape)) * 3.0).astype(np.float32)
            dist = np.zeros((b, 2 * shape[0]), np.float32)
        else:
            n = int(self.action_space.n)
            actions = self.rng.integers(0, n, size=b)
            dist = self.rng.normal(size=(b, n)).astype(np.float32)
        extra = {"action_logp": self.rng.normal(size=b).astype(np.float32),
                 "vf_preds": obs_batch.reshape(b, -1).sum(axis=1),
                 "action_dist_inputs": dist}
        return actions, [], extra

    def rng_state(self):
        return self.rng.bit_generator.state

    def set_rng_state(self, state):
        self.rng.bit_generator.state = state


class CounterEnv(gym.Env):
    """A custom env no plugin knows: obs counts steps, episodes last ``length`` steps."""

    def __init__(self, length=5, scale=1.0):
        self.length, self.scale = length, scale
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0
        self.received = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.received.append(np.array(action))
        self.t += 1
        return np.array([self.t * self.scale], np.float32), 1.0, self.t >= self.length, False, {}


class ConfigEnv(gym.Env):
    def __init__(self, config):
        self.config = config
        self.observation_space = gym.spaces.Discrete(2)
        self.action_space = gym.spaces.Discrete(2)


class StatefulCounterEnv(CounterEnv):
    def get_state(self):
        return {"t": self.t}

    def set_state(self, state):
        self.t = int(state["t"])


def policies_for(env, env_config=None, ids=("default_policy",), seed=0):
    spaces, _ = probe_spaces(env, env_config)
    obs_space, act_space = next(iter(spaces.values()))
    return {pid: FakePolicy(act_space, seed + i) for i, pid in enumerate(ids)}


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for pid in a:
        assert len(a[pid]) == len(b[pid]), pid
        for fa, fb in zip(a[pid], b[pid], strict=True):
            assert fa.keys() == fb.keys()
            for k in fa:
                assert fa[k].dtype == fb[k].dtype, k
                np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def roundtrip(state, tmp_path, name="ckpt"):
    validate_tree(state, format="msgpack")
    amber.save(state, tmp_path / name, format="msgpack")
    return amber.load(tmp_path / name)


# --------------------------------------------------------------------------- make_env


def test_make_env_gym_id_and_config():
    env = make_env("CartPole-v1", {})
    assert type(env.unwrapped).__name__ == "CartPoleEnv"
    env = make_env("Pendulum-v1", {"g": 9.0})
    assert env.unwrapped.g == 9.0


def test_make_env_classes():
    env = make_env(CounterEnv, {"length": 3})
    assert isinstance(env, CounterEnv) and env.length == 3
    env = make_env(ConfigEnv, {"a": 1})
    assert env.config == {"a": 1}
    env = make_env(MultiAgentCartPole, {"num_agents": 3})
    assert isinstance(env, MultiAgentEnv) and env.possible_agents == [0, 1, 2]


class PositionalEnv(gym.Env):
    """An env whose __init__ takes its config as one positional parameter named neither config nor env_config."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, cfg):
        self.size = cfg.get("size", 3)


def test_an_env_class_with_one_positional_parameter_gets_env_config():
    assert make_env(PositionalEnv, {"size": 5}).size == 5
    assert make_env(PositionalEnv, {}).size == 3
    assert make_env(PositionalEnv, None).size == 3
    from gymnasium.envs.classic_control import AcrobotEnv, CartPoleEnv

    # gymnasium's own classes take keyword settings, as before
    assert make_env(CartPoleEnv, {"render_mode": "rgb_array"}).render_mode == "rgb_array"
    assert isinstance(make_env(AcrobotEnv, {}), AcrobotEnv)

    class SizeEnv(PositionalEnv):
        def __init__(self, size):
            self.size = size

    assert make_env(SizeEnv, {"size": 5}).size == 5  # env_config names the parameter: SizeEnv(size=5)


@pytest.mark.parametrize(("env", "env_config", "call"), [
    ("CartPoleEnv", {"size": 3}, "CartPoleEnv(**{'size': 3})"),
    (CounterEnv, {"nosuch": 1}, "CounterEnv(**{'nosuch': 1})"),
])
def test_an_env_class_that_refuses_env_config_is_a_clear_error(env, env_config, call):
    if env == "CartPoleEnv":
        from gymnasium.envs.classic_control import CartPoleEnv as env
    with pytest.raises(TypeError, match=rf"cannot build env class .*\.{env.__name__}\(.* with env_config") as info:
        make_env(env, env_config)
    assert call in str(info.value) and "unexpected keyword argument" in str(info.value)


def test_register_env_gets_a_copy_of_the_config():
    seen = []

    def creator(cfg):
        seen.append(cfg)
        cfg["mutated"] = True
        return CounterEnv(length=cfg["length"])

    register_env("amber-test-counter", creator)
    config = {"length": 7}
    env = make_env("amber-test-counter", config)
    assert env.length == 7 and seen == [{"length": 7, "mutated": True}] and config == {"length": 7}


def test_make_env_unknown():
    register_env("amber-test-known", lambda cfg: CounterEnv())
    with pytest.raises(ValueError, match="amber-test-known") as info:
        make_env("CartPole-v9", {})
    assert "CartPole-v1" in str(info.value)
    with pytest.raises(ValueError, match="cannot make an environment"):
        make_env(object, {})
    with pytest.raises(TypeError):
        register_env("x", 3)


def test_imports_stay_light():
    code = ("import sys, amber, amber.policy.policy\n"
            "from amber.plugin_manager import get_plugin_manager\n"
            "get_plugin_manager()\n"
            "import amber.envs\n"
            "assert 'gymnasium' not in sys.modules, 'gymnasium imported'\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- MultiAgentCartPole


def test_multi_agent_cartpole_api():
    from amber.envs.multi_agent import MultiAgentCartPole as Direct
    from amber.examples.envs.classes.multi_agent import MultiAgentCartPole as Example

    assert Example is MultiAgentCartPole is Direct
    env = MultiAgentCartPole({"num_agents": 3})
    assert env.possible_agents == [0, 1, 2]
    for a in env.possible_agents:
        assert env.get_observation_space(a) == gym.spaces.Box(
            env.observation_space.low, env.observation_space.high, (4,), np.float32)
        assert env.get_action_space(a) == gym.spaces.Discrete(2)
    obs, infos = env.reset(seed=3)
    assert set(obs) == {0, 1, 2} and set(infos) == {0, 1, 2}
    assert all(isinstance(k, int) for k in obs)
    ref = gym.make("CartPole-v1")
    np.testing.assert_array_equal(obs[1], ref.reset(seed=4)[0])
    rng = np.random.default_rng(0)
    done_order, steps = [], 0
    while True:
        actions = {a: int(rng.integers(2)) for a in obs if a not in done_order}
        obs, rew, te, tr, _ = env.step(actions)
        steps += 1
        assert set(rew) == set(actions)
        for a in actions:
            if te[a] or tr[a]:
                done_order.append(a)
        assert env.agents == [a for a in env.possible_agents if a not in done_order]
        if te["__all__"] or tr["__all__"]:
            break
        assert not (te["__all__"] or tr["__all__"])
    assert sorted(done_order) == [0, 1, 2]
    with pytest.raises(ValueError, match="done"):
        env.step({done_order[0]: 0})


def test_multi_agent_cartpole_done_agent_disappears():
    env = MultiAgentCartPole({"num_agents": 2})
    obs, _ = env.reset(seed=0)
    while True:  # agent 0 always pushes right and falls; agent 1 balances-ish
        active = {a: (1 if a == 0 else int(obs[a][2] > 0)) for a in env.agents}
        obs, _, te, tr, _ = env.step(active)
        if te.get(0) or tr.get(0):
            break
    assert 0 in obs and 1 in obs and env.agents == [1]
    obs, _, te, tr, _ = env.step({1: 0})
    assert 0 not in obs and set(te) == {1, "__all__"}


# --------------------------------------------------------------------------- env state


def _run(env, rng, n, multi):
    """Step ``n`` times with random actions, resetting (unseeded) when episodes end."""
    trace = []
    for _ in range(n):
        if multi:
            actions = {a: int(rng.integers(2)) for a in env.agents}
            obs, rew, te, tr, _ = env.step(actions)
            done = te["__all__"] or tr["__all__"]
            trace.append((sorted(obs), [obs[a].tolist() for a in sorted(obs)], sorted(rew.items()), done))
        else:
            if isinstance(env.action_space, gym.spaces.Box):
                action = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
            else:
                action = int(rng.integers(2))
            obs, rew, te, tr, _ = env.step(action)
            done = te or tr
            trace.append((obs.tolist(), float(rew), bool(te), bool(tr)))
        if done:
            trace.append(("reset", env.reset()[0] if not multi else sorted(env.reset()[0])))
            if not multi:
                trace[-1] = ("reset", trace[-1][1].tolist())
    return trace


@pytest.mark.parametrize("make,multi,warmup", [
    (lambda: gym.make("CartPole-v1"), False, 30),
    (lambda: gym.make("Pendulum-v1"), False, 150),   # truncation at 200 needs TimeLimit's counter
    (lambda: MultiAgentCartPole({"num_agents": 3}), True, 25),
])
@pytest.mark.parametrize("through_checkpoint", [False, True])
def test_env_state_continues_bit_exactly(make, multi, warmup, through_checkpoint, tmp_path, pm):
    env = make()
    env.reset(seed=11)
    _run(env, np.random.default_rng(1), warmup, multi)
    state = pm.hook.amber_capture_state(component=env, key="env")
    assert state is not None
    validate_tree(state, format="msgpack")
    if through_checkpoint:
        state = roundtrip(state, tmp_path)
    expected = _run(env, np.random.default_rng(2), 100 if not multi else 60, multi)
    fresh = make()
    assert pm.hook.amber_restore_state(component=fresh, state=state, key="env") is True
    got = _run(fresh, np.random.default_rng(2), 100 if not multi else 60, multi)
    assert got == expected
    assert any(t[0] == "reset" for t in expected)  # the episode end and the next episode are covered too


def test_env_state_before_first_reset_and_unknown_envs(pm):
    env = gym.make("CartPole-v1")
    state = capture_env(env)
    fresh = gym.make("CartPole-v1")
    fresh.reset(seed=0)
    pm.hook.amber_restore_state(component=fresh, state=state, key="env")
    with pytest.raises(gym.error.ResetNeeded):
        fresh.step(0)
    assert pm.hook.amber_capture_state(component=CounterEnv(), key="env") is None
    assert pm.hook.amber_capture_state(component=gym.make("MountainCar-v0"), key="env") is None
    with pytest.raises(CheckpointError, match="Pendulum"):
        pm.hook.amber_restore_state(component=gym.make("Pendulum-v1"), state=capture_env(env), key="env")


# --------------------------------------------------------------------------- hostile env states


def _played(name="CartPole-v1", steps=4):
    env = gym.make(name)
    env.reset(seed=3)
    for i in range(steps):
        env.step(i % 2 if name == "CartPole-v1" else np.array([0.5], np.float32))
    return env


def _live(env):
    """Every attribute of the wrappers and the base env, by identity, and the generator's state."""
    objs = [*wrappers(env), env.unwrapped]
    return [dict(vars(o)) for o in objs], env.unwrapped._np_random.bit_generator.state


def _assert_untouched(env, before):
    attrs, rng = _live(env)
    assert rng == before[1]
    for now, then in zip(attrs, before[0], strict=True):
        assert now.keys() == then.keys()
        assert all(now[k] is then[k] for k in now), [k for k in now if now[k] is not then[k]]


def _attrs(i):
    return lambda s: s["wrappers"][i]["attrs"]


def _bg(s):
    return s["np_random"]["bit_generator"]


HOSTILE_ENV_STATES = {
    "method step=0": lambda s: _attrs(0)(s).update(step=0),
    "method reset": lambda s: _attrs(2)(s).update(reset=None),
    "dunder __class__": lambda s: _attrs(0)(s).update(__class__="x"),
    "dunder __dict__": lambda s: _attrs(1)(s).update(__dict__={}),
    "mangled private": lambda s: _attrs(0)(s).update(_TimeLimit__secret=1),
    "config attr env": lambda s: _attrs(0)(s).update(env=None),
    "config attr spec": lambda s: _attrs(0)(s).update(spec=None),
    "property unwrapped": lambda s: _attrs(0)(s).update(unwrapped=1),
    "property np_random": lambda s: _attrs(0)(s).update(np_random=1),
    "new attribute": lambda s: _attrs(0)(s).update(brand_new=1),
    "missing attribute": lambda s: _attrs(0)(s).pop("_elapsed_steps"),
    "int key": lambda s: _attrs(0)(s).update({3: 1}),
    "int as str": lambda s: _attrs(0)(s).update(_max_episode_steps="500"),
    "int as None": lambda s: _attrs(0)(s).update(_max_episode_steps=None),
    "int as float": lambda s: _attrs(0)(s).update(_elapsed_steps=4.0),
    "int too wide": lambda s: _attrs(0)(s).update(_elapsed_steps=2**64),
    "bool as int": lambda s: _attrs(1)(s).update(_has_reset=1),
    "bool as list": lambda s: _attrs(2)(s).update(checked_step=[True]),
    "attrs not a map": lambda s: s["wrappers"][0].update(attrs=[1]),
    "wrapper renamed": lambda s: s["wrappers"][0].update(type="RecordVideo"),
    "wrapper missing": lambda s: s["wrappers"].pop(1),
    "wrapper extra key": lambda s: s["wrappers"][0].update(extra=1),
    "previous data wrong shape": lambda s: _attrs(2)(s).update(_previous_data={"obs": np.zeros(3, np.float32)}),
    "previous data wrong dtype": lambda s: _attrs(2)(s).update(_previous_data={"obs": np.zeros(4)}),
    "kind renamed": lambda s: s.update(kind="Pendulum"),
    "unknown key": lambda s: s.update(extra=1),
    "missing key": lambda s: s.pop("steps_beyond_terminated"),
    "state wrong shape": lambda s: s.update(state=np.zeros(7)),
    "state as text": lambda s: s.update(state="abc"),
    "state NaN": lambda s: s.update(state=np.full(4, np.nan)),
    "state object": lambda s: s.update(state=[1, 2, 3, 4]),
    "steps_beyond_terminated bool": lambda s: s.update(steps_beyond_terminated=True),
    "steps_beyond_terminated str": lambda s: s.update(steps_beyond_terminated="1"),
    "rng kind 'test'": lambda s: _bg(s).update(bit_generator="test"),
    "rng kind 'default_rng'": lambda s: _bg(s).update(bit_generator="default_rng"),
    "rng kind int": lambda s: _bg(s).update(bit_generator=3),
    "rng kind of another state": lambda s: _bg(s).update(bit_generator="MT19937"),
    "rng short state": lambda s: _bg(s)["state"].pop("inc"),
    "rng state not a map": lambda s: _bg(s).update(state=[1, 2]),
    "rng state wrong type": lambda s: _bg(s)["state"].update(state="int:abc"),
    "rng state float": lambda s: _bg(s)["state"].update(state=1.5),
    "rng state too wide": lambda s: _bg(s)["state"].update(state=f"int:{2**129}"),
    "rng state huge text": lambda s: _bg(s)["state"].update(state="int:" + "9" * 5000),
    "rng negative": lambda s: _bg(s).update(uinteger=-1),
    "rng has_uint32 2": lambda s: _bg(s).update(has_uint32=2),
    "rng missing field": lambda s: _bg(s).pop("has_uint32"),
    "rng extra field": lambda s: _bg(s).update(buffer=np.zeros(4, np.uint64)),
    "rng seed str": lambda s: s["np_random"].update(seed="seven"),
    "rng seed -2": lambda s: s["np_random"].update(seed=-2),
    "rng not a map": lambda s: s.update(np_random=[1]),
}


@pytest.mark.parametrize("mutation", sorted(HOSTILE_ENV_STATES))
def test_hostile_env_state_is_refused_and_changes_nothing(mutation, pm, monkeypatch):
    called = []
    monkeypatch.setattr(np.random, "test", lambda *a, **k: called.append(a), raising=False)
    state = copy.deepcopy(capture_env(_played()))
    HOSTILE_ENV_STATES[mutation](state)
    env = _played(steps=2)
    before = _live(env)
    with pytest.raises(CheckpointError, match=r"'env[.\w\[\]]*'"):
        pm.hook.amber_restore_state(component=env, state=state, key="env")
    _assert_untouched(env, before)
    assert not called
    expected = _played(steps=2)
    for i in range(3):  # the env still steps as before (its methods are its own)
        np.testing.assert_array_equal(env.step(i % 2)[0], expected.step(i % 2)[0])


def test_hostile_state_through_the_hook_of_components_restore(pm, tmp_path):
    from amber import components

    state = capture_env(_played())
    state["wrappers"][0]["attrs"]["step"] = 0
    env, twin = _played(steps=2), _played(steps=2)
    with pytest.raises(CheckpointError, match=r"'0\.wrappers\[0\]\.attrs\.step'"):
        components.restore(None, {"0": env}, {"0": state}, pm=pm)
    # the failed component gets its captured state back: equal values, the same behaviour
    assert _run(env, np.random.default_rng(0), 40, False) == _run(twin, np.random.default_rng(0), 40, False)


@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_env_rng_of_every_kind_in_the_table_is_rebuilt(kind, pm, tmp_path):
    env = _played()
    env.unwrapped._np_random = np.random.Generator(getattr(np.random, kind)(5))
    state = roundtrip(capture_env(env), tmp_path)
    fresh = _played(steps=1)
    assert pm.hook.amber_restore_state(component=fresh, state=state, key="env") is True
    assert type(fresh.unwrapped.np_random.bit_generator).__name__ == kind
    assert fresh.unwrapped.np_random.random() == env.unwrapped.np_random.random()


def test_pendulum_last_u_and_state_are_checked(pm):
    state = capture_env(_played("Pendulum-v1"))
    for bad in ({"last_u": np.zeros(3)}, {"last_u": "x"}, {"last_u": np.array(np.inf)}, {"state": np.zeros(4)}):
        env = _played("Pendulum-v1", steps=1)
        before = _live(env)
        with pytest.raises(CheckpointError, match=f"env.{next(iter(bad))}"):
            restore_env(env, {**state, **bad})
        _assert_untouched(env, before)


@pytest.mark.parametrize("edit", [
    lambda s: s["envs"][1]["wrappers"][0]["attrs"].update(step=0),
    lambda s: s.update(agents=[0, 0]),
    lambda s: s.update(agents=[5]),
    lambda s: s.update(terminated=["0"]),
    lambda s: s.update(truncated=[True]),
    lambda s: s["envs"].pop(),
    lambda s: s.update(envs={"0": 1}),
], ids=["sub-env method", "duplicate agent", "unknown agent", "agent id str", "agent id bool",
        "one env short", "envs a map"])
def test_multi_agent_state_is_checked_whole_before_any_sub_env(edit):
    source = MultiAgentCartPole({"num_agents": 2})
    source.reset(seed=1)
    state = copy.deepcopy(capture_env(source))
    edit(state)
    env = MultiAgentCartPole({"num_agents": 2})
    env.reset(seed=2)
    before = [_live(e) for e in env.envs], list(env.agents)
    with pytest.raises(CheckpointError, match="env"):
        restore_env(env, state)
    for e, b in zip(env.envs, before[0], strict=True):
        _assert_untouched(e, b)
    assert env.agents == before[1]


# --------------------------------------------------------------------------- EnvRunner


def test_runner_sample_counts_and_fragments():
    pols = policies_for("CartPole-v1")
    runner = EnvRunner("CartPole-v1", {}, 4, pols, None, seed=0)
    batches, m = runner.sample(1001)
    assert m["num_env_steps"] == 1004 and m["num_agent_steps"] == 1004
    assert pols["default_policy"].calls == 251
    frags = batches["default_policy"]
    assert sum(len(f["obs"]) for f in frags) == 1004
    assert len(m["episode_returns"]) == len(m["episode_lengths"]) == len(m["agent_episode_returns"]["default_policy"])
    assert m["episode_returns"] == [float(n) for n in m["episode_lengths"]]  # CartPole: 1 per step
    ends = 0
    for f in frags:
        n = len(f["obs"])
        assert set(f) >= {"obs", "new_obs", "actions", "rewards", "terminateds", "truncateds",
                          "action_logp", "vf_preds", "action_dist_inputs", "eps_id"}
        assert all(len(v) == n for v in f.values())
        assert f["rewards"].dtype == np.float32 and f["terminateds"].dtype == bool
        assert f["eps_id"].dtype == np.int64 and len(set(f["eps_id"].tolist())) == 1
        np.testing.assert_array_equal(f["obs"][1:], f["new_obs"][:-1])
        done = f["terminateds"] | f["truncateds"]
        assert not done[:-1].any()
        ends += bool(done[-1])
    assert ends == len(m["episode_returns"])
    assert sum(1 for f in frags if not (f["terminateds"][-1] or f["truncateds"][-1])) == 4
    # the next sample continues where the unfinished fragments stopped
    open_ends = {int(f["eps_id"][0]): f["new_obs"][-1] for f in frags
                 if not (f["terminateds"][-1] or f["truncateds"][-1])}
    nxt, _ = runner.sample(4)
    for f in nxt["default_policy"]:
        np.testing.assert_array_equal(f["obs"][0], open_ends[int(f["eps_id"][0])])


@pytest.mark.parametrize("env,env_config,num_envs", [
    ("CartPole-v1", {}, 3), ("CartPole-v1", {}, 4), (MultiAgentCartPole, {"num_agents": 3}, 3),
])
def test_runner_exact_sample_takes_exactly_the_steps_asked(env, env_config, num_envs):
    """``exact=True`` (PPO's): exactly the env steps asked (env steps, not agent steps), the first
    copies taking the remainder; the copies' episodes go on at the next call, from where they stopped."""
    pols = policies_for(env, env_config, ids=("p",) if env is MultiAgentCartPole else ("default_policy",))
    mapping = (lambda a, e, w, **k: "p") if env is MultiAgentCartPole else None
    runner = EnvRunner(env, env_config, num_envs, pols, mapping, seed=0)
    open_ends: set[tuple[int, bytes]] = set()
    for n in (1001, 998, 1, 2):
        batches, m = runner.sample(n, exact=True)
        assert m["num_env_steps"] == n
        frags = next(iter(batches.values()))
        assert sum(len(f["obs"]) for f in frags) == m["num_agent_steps"] >= n
        starts = {(int(f["eps_id"][0]), f["obs"][0].tobytes()) for f in frags}
        if n >= num_envs:  # every copy stepped: each open episode continued where it stopped
            assert open_ends <= starts
        open_ends = {(int(f["eps_id"][-1]), f["new_obs"][-1].tobytes()) for f in frags
                     if not (f["terminateds"][-1] or f["truncateds"][-1])}
    assert runner.sample(1001)[1]["num_env_steps"] > 1001  # not exact: whole rounds of every copy


def test_runner_seeds_env_i_with_seed_plus_i():
    pols = policies_for("CartPole-v1")
    runner = EnvRunner("CartPole-v1", {}, 3, pols, None, seed=40)
    batches, _ = runner.sample(3)
    firsts = {int(f["eps_id"][0]): f["obs"][0] for f in batches["default_policy"]}
    for i in range(3):
        np.testing.assert_array_equal(firsts[i], gym.make("CartPole-v1").reset(seed=40 + i)[0])
    a, _ = EnvRunner("CartPole-v1", {}, 2, policies_for("CartPole-v1"), None, seed=5).sample(600)
    b, _ = EnvRunner("CartPole-v1", {}, 2, policies_for("CartPole-v1"), None, seed=5).sample(600)
    assert_batches_equal(a, b)


def test_runner_multi_agent_policy_calls_and_mapping():
    pols = policies_for(MultiAgentCartPole, {"num_agents": 3}, ids=("p0", "p1"))
    calls = []

    def mapping(agent_id, episode, worker, **kw):
        assert isinstance(worker, EnvRunner)
        calls.append((episode.id_, agent_id))
        return "p0" if agent_id == 0 else "p1"

    runner = EnvRunner(MultiAgentCartPole, {"num_agents": 3}, 2, pols, mapping, seed=1)
    batches, m = runner.sample(400)
    steps = m["num_env_steps"] // 2
    assert 0 < pols["p0"].calls <= steps and pols["p1"].calls == steps
    assert len(calls) == len(set(calls))
    seen = {(int(f["eps_id"][0]), pid) for pid, fs in batches.items() for f in fs}
    assert {e for e, _ in seen} == {e for e, _ in calls}
    assert m["num_agent_steps"] == sum(len(f["obs"]) for fs in batches.values() for f in fs)
    assert m["num_agent_steps"] > m["num_env_steps"]
    n_eps = len(m["episode_returns"])
    assert n_eps > 0 and len(m["agent_episode_returns"]["p1"]) >= 2 * n_eps
    total = sum(m["agent_episode_returns"]["p0"]) + sum(m["agent_episode_returns"]["p1"])
    assert total >= sum(m["episode_returns"])


def test_runner_single_agent_clips_box_actions():
    pols = {"default_policy": FakePolicy(gym.spaces.Box(-1.0, 1.0, (1,), np.float32))}
    runner = EnvRunner(CounterEnv, {"length": 4}, 1, pols, None, seed=None)
    batches, _ = runner.sample(40)
    stored = np.concatenate([f["actions"] for f in batches["default_policy"]])
    received = np.concatenate(runner.envs[0].received)
    assert np.abs(stored).max() > 1.0 and np.abs(received).max() <= 1.0
    np.testing.assert_array_equal(received, np.clip(stored[:, 0], -1, 1))


def test_runner_unknown_mapping_target():
    pols = policies_for(MultiAgentCartPole, {"num_agents": 2}, ids=("p0",))
    runner = EnvRunner(MultiAgentCartPole, {"num_agents": 2}, 1, pols, lambda a, e, w, **k: "zz")
    with pytest.raises(ValueError, match="zz"):
        runner.sample(1)


@pytest.mark.parametrize("env,env_config,ids,mapping", [
    ("CartPole-v1", {}, ("default_policy",), None),
    ("Pendulum-v1", {}, ("default_policy",), None),
    (MultiAgentCartPole, {"num_agents": 3}, ("p0", "p1"), lambda a, e, w, **k: f"p{min(a, 1)}"),
])
@pytest.mark.parametrize("through_checkpoint", [False, True])
def test_runner_state_continues_bit_exactly(env, env_config, ids, mapping, through_checkpoint, tmp_path):
    pols = policies_for(env, env_config, ids)
    runner = EnvRunner(env, env_config, 3, pols, mapping, seed=7)
    runner.sample(333)
    state = runner.get_state()
    rng_states = {pid: p.rng_state() for pid, p in pols.items()}
    if through_checkpoint:
        state = roundtrip(state, tmp_path)
    expected = [runner.sample(250) for _ in range(3)]

    pols2 = policies_for(env, env_config, ids, seed=99)
    for pid, p in pols2.items():
        p.set_rng_state(rng_states[pid])
    fresh = EnvRunner(env, env_config, 3, pols2, mapping, seed=7)
    fresh.set_state(state)
    got = [fresh.sample(250) for _ in range(3)]
    for (eb, em), (gb, gm) in zip(expected, got, strict=True):
        assert_batches_equal(eb, gb)
        assert em == gm


def test_runner_state_before_sampling(tmp_path):
    runner = EnvRunner("CartPole-v1", {}, 2, policies_for("CartPole-v1"), None, seed=3)
    state = roundtrip(runner.get_state(), tmp_path)
    fresh = EnvRunner("CartPole-v1", {}, 2, policies_for("CartPole-v1"), None, seed=3)
    fresh.set_state(state)
    assert_batches_equal(runner.sample(300)[0], fresh.sample(300)[0])


def test_runner_unknown_env_warns_once_and_restarts_episodes(tmp_path):
    runner = EnvRunner(CounterEnv, {"length": 50}, 2, policies_for(CounterEnv), None, seed=0)
    runner.sample(10)
    with pytest.warns(UserWarning, match="CounterEnv.*restart"):
        state = runner.get_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.get_state()
    state = roundtrip(state, tmp_path)
    fresh = EnvRunner(CounterEnv, {"length": 50}, 2, policies_for(CounterEnv), None, seed=0)
    fresh.set_state(state)
    batches, m = fresh.sample(10)
    for f in batches["default_policy"]:
        assert f["obs"][0, 0] == 0.0  # a new episode, from reset
        assert f["eps_id"][0] >= 2  # episode ids keep counting


def test_runner_warning_names_the_wrapper_no_plugin_captures():
    register_env("amber-test-normalized", lambda cfg: gym.wrappers.NormalizeObservation(gym.make("CartPole-v1")))
    runner = EnvRunner("amber-test-normalized", {}, 1, policies_for("CartPole-v1"), None, seed=0)
    runner.sample(10)
    with pytest.warns(UserWarning) as record:
        runner.get_state()
    message = str(record[0].message)
    assert message.startswith("no plugin captures the state of env NormalizeObservation > TimeLimit")
    assert "but not the wrapper(s) around it, NormalizeObservation;" in message  # the inner chain is known
    assert "restart on restore" in message and "running statistics) is not saved" in message


def test_runner_stateful_user_env_is_captured(tmp_path):
    runner = EnvRunner(StatefulCounterEnv, {"length": 50}, 1, policies_for(StatefulCounterEnv), None)
    runner.sample(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = roundtrip(runner.get_state(), tmp_path)
    fresh = EnvRunner(StatefulCounterEnv, {"length": 50}, 1, policies_for(StatefulCounterEnv), None)
    fresh.set_state(state)
    batches, _ = fresh.sample(1)
    assert batches["default_policy"][0]["obs"][0, 0] == 10.0


def test_runner_set_policies_remaps_removed_policies():
    pols = policies_for(MultiAgentCartPole, {"num_agents": 2}, ids=("p0", "p1"))
    runner = EnvRunner(MultiAgentCartPole, {"num_agents": 2}, 1, pols, lambda a, e, w, **k: f"p{a}", seed=0)
    runner.sample(5)
    only = {"p0": pols["p0"]}
    runner.set_policies(only, lambda a, e, w, **k: "p0")
    batches, _ = runner.sample(5)
    assert set(batches) == {"p0"}
    runner.stop()


def test_runner_state_into_more_env_copies(tmp_path):
    pols = policies_for("CartPole-v1")
    runner = EnvRunner("CartPole-v1", {}, 2, pols, None, seed=1)
    runner.sample(100)
    state = roundtrip(runner.get_state(), tmp_path)
    rng = pols["default_policy"].rng_state()
    fresh_pols = policies_for("CartPole-v1")
    fresh = EnvRunner("CartPole-v1", {}, 3, fresh_pols, None, seed=1)
    fresh.set_state(state)
    fresh_pols["default_policy"].set_rng_state(rng)
    batches, _ = fresh.sample(3)
    by_eps = {int(f["eps_id"][0]): f for f in batches["default_policy"]}
    live = {s.episode.id_: s.obs[0] for s in runner._slots}
    for eps_id, obs in live.items():
        np.testing.assert_array_equal(by_eps[eps_id]["obs"][0], obs)
    assert len(by_eps) == 3


_CHILD = """
import sys, numpy as np, amber
from amber.envs.env_runner import EnvRunner
from amber.envs import MultiAgentCartPole
from amber.state import text_to_wide_ints as _text_as_wide_ints
from tests.test_envs import policies_for
ckpt, out = sys.argv[1], sys.argv[2]
state = amber.load(ckpt)
pols = policies_for(MultiAgentCartPole, {"num_agents": 2}, ("p0", "p1"))
for pid, p in pols.items():
    p.set_rng_state(_text_as_wide_ints(state["rng"][pid]))
runner = EnvRunner(MultiAgentCartPole, {"num_agents": 2}, 2, pols, lambda a, e, w, **k: f"p{a}", seed=4)
runner.set_state(state["runner"])
batches, _ = runner.sample(300)
np.savez(out, **{f"{pid}|{i}|{k}": v for pid, fs in batches.items() for i, f in enumerate(fs) for k, v in f.items()})
"""


def test_runner_state_continues_in_a_fresh_process(tmp_path):
    import os
    from pathlib import Path

    from amber.state import wide_ints_to_text as _wide_ints_as_text

    pols = policies_for(MultiAgentCartPole, {"num_agents": 2}, ("p0", "p1"))
    runner = EnvRunner(MultiAgentCartPole, {"num_agents": 2}, 2, pols, lambda a, e, w, **k: f"p{a}", seed=4)
    runner.sample(123)
    rngs = {pid: _wide_ints_as_text(p.rng_state()) for pid, p in pols.items()}
    amber.save({"runner": runner.get_state(), "rng": rngs}, tmp_path / "c", format="msgpack")
    expected, _ = runner.sample(300)
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "c"), str(tmp_path / "out.npz")],
                   check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    got = np.load(tmp_path / "out.npz")
    flat = {f"{pid}|{i}|{k}": v for pid, fs in expected.items() for i, f in enumerate(fs) for k, v in f.items()}
    assert sorted(got.files) == sorted(flat)
    for k, v in flat.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v, err_msg=k)
