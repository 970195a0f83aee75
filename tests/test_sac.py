"""SAC: config, policy, learner, checkpoints (round trips, replay buffer, exact resume), export, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.sac import SAC, SACConfig
from amber.algorithms.sac.sac_learner import polyak_update
from amber.algorithms.sac.sac_torch_policy import LOG_STD_MAX, LOG_STD_MIN, SACTorchPolicy, squashed_logp
from amber.checkpoint import read_checkpoint
from amber.envs import MultiAgentEnv
from amber.errors import CheckpointError, CorruptCheckpointError
from amber.plugins.env_state import capture_env, restore_env
from amber.policy.policy import Policy
from amber.utils.checkpoints import get_checkpoint_info
from amber.utils.replay_buffers import ReplayBuffer
from tests.treeutil import assert_same_weights, assert_tree_equal

FORMATS = ["pickle", "msgpack"]
SMALL = {"train_batch_size": 32, "num_steps_sampled_before_learning_starts": 64,
         "model": {"fcnet_hiddens": [32, 32]}}
STEPS_PER_ITER = 150


class MultiAgentPendulum(MultiAgentEnv):
    """``num_agents`` independent Pendulum-v1 games; agent ``i`` (an int) plays game ``i``.

    Every game is truncated at 200 steps, so all agents' episodes end together.
    ``reset(seed=s)`` seeds game ``i`` with ``s + i``. Its state (for exact
    resume) is each game's, through amber's Pendulum capture.
    """

    def __init__(self, config=None):
        super().__init__()
        n = int((config or {}).get("num_agents", 2))
        self.envs = [gym.make("Pendulum-v1") for _ in range(n)]
        self.possible_agents = list(range(n))
        self.agents = []
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space

    def reset(self, *, seed=None, options=None):
        self.agents = list(self.possible_agents)
        obs = {i: env.reset(seed=None if seed is None else seed + i)[0] for i, env in enumerate(self.envs)}
        return obs, {i: {} for i in obs}

    def step(self, action_dict):
        obs, rew, term, trunc = {}, {}, {}, {}
        for i, action in action_dict.items():
            obs[i], rew[i], term[i], trunc[i], _ = self.envs[i].step(action)
        term["__all__"] = all(term[i] for i in action_dict)
        trunc["__all__"] = all(trunc[i] for i in action_dict)
        return obs, rew, term, trunc, {i: {} for i in obs}

    def get_state(self):
        return {"envs": [capture_env(env) for env in self.envs], "agents": list(self.agents)}

    def set_state(self, state):
        for env, saved in zip(self.envs, state["envs"], strict=True):
            restore_env(env, saved)
        self.agents = list(state["agents"])


amber.register_class(MultiAgentPendulum, name="tests.sac.MultiAgentPendulum")


def agent_to_policy(agent_id, episode, worker, **kw):
    """Agent i → policy f"p{i}"."""
    return f"p{agent_id}"


amber.register_class(agent_to_policy, name="tests.sac.agent_to_policy")


def single(seed=0, store=False):
    return (SACConfig().environment("Pendulum-v1").training(**SMALL)
            .reporting(min_sample_timesteps_per_iteration=STEPS_PER_ITER)
            .checkpointing(store_replay_buffer=store).debugging(seed=seed))


def multi(seed=0, store=False, **kw):
    return (single(seed, store).environment(MultiAgentPendulum, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=agent_to_policy, **kw))


def weights(algo):
    return {pid: p.get_weights() for pid, p in algo.policies.items()}


def pendulum_policy(**config):
    env = gym.make("Pendulum-v1")
    return SACTorchPolicy(env.observation_space, env.action_space,
                          {"model": {"fcnet_hiddens": [32, 32]}, "seed": 0, **config})


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path / "results"))


# -- config -------------------------------------------------------------------------------


def test_defaults_are_rllibs():
    cfg = SACConfig()
    assert (cfg.actor_lr, cfg.critic_lr, cfg.alpha_lr) == (3e-4, 3e-4, 3e-4)
    assert (cfg.tau, cfg.initial_alpha, cfg.target_entropy, cfg.twin_q) == (0.005, 1.0, "auto", True)
    assert (cfg.train_batch_size, cfg.gamma, cfg.num_steps_sampled_before_learning_starts) == (256, 0.99, 1500)
    assert cfg.model == {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
    assert (cfg.rollout_fragment_length, cfg.min_sample_timesteps_per_iteration) == (1, 1000)
    assert cfg.store_replay_buffer is False and cfg.replay_buffer_config["capacity"] == 1_000_000
    back = SACConfig.from_dict(cfg.training(tau=0.01).to_dict())
    assert type(back) is SACConfig and back.to_dict() == cfg.to_dict()


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="'actor_lrr'.*actor_lr"):
        SACConfig().training(actor_lrr=1e-3)
    with pytest.raises(ValueError, match="'clip_param'"):
        SACConfig().training(clip_param=0.2)  # a PPO setting


@pytest.mark.parametrize("setting", [
    {"tau": 0.0}, {"tau": 1.5}, {"actor_lr": -1.0}, {"critic_lr": float("nan")}, {"alpha_lr": "fast"},
    {"initial_alpha": 0.0}, {"target_entropy": "high"}, {"twin_q": "yes"}, {"gamma": 1.2},
    {"replay_buffer_config": {"capacity": 0}}, {"replay_buffer_config": {}}, {"training_intensity": 0},
    {"replay_buffer_config": {"capacity": 1e4}}, {"replay_buffer_config": {"capacity": None}},
    {"train_batch_size": 0}, {"num_steps_sampled_before_learning_starts": -1},
], ids=lambda s: next(iter(s)))
def test_bad_values_are_named(setting):
    key = next(iter(setting))
    with pytest.raises(ValueError, match=key):
        SACConfig().environment("Pendulum-v1").training(**setting).build()


def test_discrete_actions_are_a_clear_error():
    with pytest.raises(ValueError, match="SAC needs a Box.*Discrete"):
        SACConfig().environment("CartPole-v1").build()


def test_unbounded_actions_are_a_clear_error():
    with pytest.raises(ValueError, match="finite"):
        SACTorchPolicy(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Box(-np.inf, np.inf, (2,)), {})


def test_target_entropy_auto_and_given():
    assert pendulum_policy().target_entropy == -1.0
    assert pendulum_policy(target_entropy=-0.25).target_entropy == -0.25
    box = gym.spaces.Box(-1, 1, (2, 3))
    assert SACTorchPolicy(gym.spaces.Box(-1, 1, (4,)), box, {"seed": 0}).target_entropy == -6.0


# -- the policy ------------------------------------------------------------------------------


def test_squashed_logp_is_the_log_density_of_tanh_u():
    gen = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen) * 0.5
    u = mean + log_std.exp() * torch.randn(64, 3, generator=gen)
    tanh = torch.distributions.TanhTransform(cache_size=1)  # log_prob(tanh(u)) reuses u, no atanh
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1), [tanh])
    assert torch.allclose(squashed_logp(u, mean, log_std), ref.log_prob(tanh(u)), atol=1e-4)
    # where tanh saturates to exactly 1 in float32 the density stays finite
    big = torch.full((1, 1), 30.0)
    assert torch.isfinite(squashed_logp(big, big, torch.zeros(1, 1))).all()


def test_actions_are_inside_the_bounds_and_greedy_is_the_squashed_mean():
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    policy = SACTorchPolicy(gym.spaces.Box(-1, 1, (3,)), space, {"seed": 1})
    with torch.no_grad():
        policy.model.pi[-1].bias.copy_(torch.tensor([3.0, -3.0, 1.5, 1.5]))  # big means, wide noise
    obs = np.random.default_rng(0).uniform(-1, 1, (500, 3)).astype(np.float32)
    acts, _, extra = policy.compute_actions(obs, explore=True)
    assert acts.shape == (500, 2) and acts.dtype == np.float32
    assert np.all(acts >= space.low) and np.all(acts <= space.high)
    assert len(np.unique(acts[:, 0])) > 400  # sampled, not constant
    assert extra["action_dist_inputs"].shape == (500, 4) and extra["action_logp"].shape == (500,)
    greedy, _, extra = policy.compute_actions(obs, explore=False)
    mean = extra["action_dist_inputs"][:, :2]
    want = space.low + (np.tanh(mean) + 1) / 2 * (space.high - space.low)
    np.testing.assert_allclose(greedy, want, atol=1e-5)
    assert policy.global_timestep == 1000


def test_discrete_observations_work():
    policy = SACTorchPolicy(gym.spaces.Discrete(5, start=2), gym.spaces.Box(-1, 1, (1,)), {"seed": 0})
    acts, _, _ = policy.compute_actions(np.array([2, 6, 4]))
    assert acts.shape == (3, 1)
    graph = policy.export_graph()
    inputs = policy.compute_actions(np.array([2, 6, 4]), explore=False)[2]["action_dist_inputs"]
    np.testing.assert_allclose(graph.forward_numpy(np.array([2, 6, 4]))["action_dist_inputs"], inputs,
                               atol=1e-5)


def test_export_graph_is_the_actor_and_its_greedy_rule_gives_the_policys_action():
    policy = pendulum_policy()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # weights that give O(1) means and log_stds on both sides of the clip bounds
        for p in policy.model.pi.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        policy.model.pi[-1].bias.copy_(torch.tensor([0.3, 40.0]))
    graph = policy.export_graph()
    assert graph.output_names == ["action_dist_inputs"]
    obs = np.random.default_rng(1).uniform(-8, 8, (64, 3)).astype(np.float32)
    got = graph.forward_numpy(obs)["action_dist_inputs"]
    with torch.no_grad():
        want = policy.model(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.all(got[:, 1] == LOG_STD_MAX)  # the clip is in the graph
    info = graph.describe()
    assert info["action_distribution"] == "squashed_gaussian"
    assert "tanh(mean)" in info["greedy_action"]
    assert info["outputs"][0]["kind"] == "clip_log_std"
    low, high = np.array(info["action_space"]["low"]), np.array(info["action_space"]["high"])
    for row in obs[:8]:
        mean = graph.forward_numpy(row[None])["action_dist_inputs"][0, :1]
        action = low + (np.tanh(mean) + 1) / 2 * (high - low)
        np.testing.assert_allclose(action, policy.compute_single_action(row, explore=False)[0], atol=1e-5)
    assert LOG_STD_MIN < 0 < LOG_STD_MAX


def test_polyak_update_moves_targets_by_tau():
    policy = pendulum_policy()
    model = policy.model
    with torch.no_grad():
        for p in model.q1.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.q1_target.parameters()]
    polyak_update(model.target_critics, model.critics, 0.25)
    for t, b, s in zip(model.q1_target.parameters(), before, model.q1.parameters(), strict=True):
        torch.testing.assert_close(t, 0.75 * b + 0.25 * s)


def test_with_tau_1_targets_equal_the_critics_after_each_update():
    algo = single().training(tau=1.0).build()
    algo.train()
    w = algo.get_policy().get_weights()
    for name in [k for k in w if k.startswith(("q1.", "q2."))]:
        target = name.replace("q1.", "q1_target.").replace("q2.", "q2_target.")
        assert np.array_equal(w[name], w[target]), name


def test_single_critic_without_twin_q():
    algo = single().training(twin_q=False).build()
    algo.train()
    names = set(algo.get_policy().get_weights())
    assert any(n.startswith("q1.") for n in names) and not any(n.startswith("q2") for n in names)


# -- training -----------------------------------------------------------------------------------


def test_train_result_and_buffer():
    algo = single().build()
    result = algo.train()
    assert result["num_env_steps_sampled_lifetime"] == STEPS_PER_ITER
    learner = result["info"]["learner"]["default_policy"]
    stats = learner["learner_stats"]
    for key in ("critic_loss", "actor_loss", "alpha_loss", "alpha_value", "mean_q", "entropy"):
        assert math.isfinite(stats[key]), key
    assert stats["target_entropy"] == -1.0
    # one update per env step once 64 transitions are in: 150 - 64 + 1
    assert stats["num_grad_updates"] == result["num_updates_lifetime"] == STEPS_PER_ITER - 64 + 1
    assert learner["replay_buffer_size"] == len(algo.replay_buffers["default_policy"]) == STEPS_PER_ITER
    assert stats["alpha_value"] < 1.0  # the temperature is learned (it starts at initial_alpha)


def test_a_buffer_smaller_than_learning_starts_still_learns():
    algo = single().training(replay_buffer_config={"capacity": 32}).build()  # learning starts: 64
    result = algo.train()
    # as with a larger buffer: one update per env step once 64 steps were sampled
    assert result["num_updates_lifetime"] == STEPS_PER_ITER - 64 + 1
    assert len(algo.replay_buffers["default_policy"]) == 32


def test_seeded_runs_are_identical():
    a, b = single(seed=3).build(), single(seed=3).build()
    for _ in range(2):
        a.train()
        b.train()
    assert_same_weights(weights(a), weights(b))


def greedy_return(policy, seeds):
    env = gym.make("Pendulum-v1")
    total = 0.0
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            obs, reward, term, trunc, _ = env.step(policy.compute_single_action(obs, explore=False)[0])
            total += reward
            done = term or trunc
    return total / len(seeds)


def test_sac_learns_pendulum():
    """A small SAC improves its greedy return on fixed start states within 4,000 env steps."""
    algo = (SACConfig().environment("Pendulum-v1").debugging(seed=0)
            .training(model={"fcnet_hiddens": [64, 64]}, train_batch_size=128,
                      num_steps_sampled_before_learning_starts=500, actor_lr=1e-3, critic_lr=1e-3,
                      alpha_lr=1e-3)
            .reporting(min_sample_timesteps_per_iteration=1000))
    algo = algo.build()
    seeds = [100, 101, 102, 103]
    before = greedy_return(algo.get_policy(), seeds)
    for _ in range(4):
        result = algo.train()
    after = greedy_return(algo.get_policy(), seeds)
    assert after > before + 300, (before, after)
    assert result["episode_return_max"] > -1000


def test_policies_to_train_leaves_the_others_unchanged():
    algo = multi(policies_to_train=["p0"]).build()
    before = weights(algo)
    algo.train()
    after = weights(algo)
    assert not np.array_equal(before["p0"]["pi.0.weight"], after["p0"]["pi.0.weight"])
    assert_same_weights({"p1": before["p1"]}, {"p1": after["p1"]})
    assert len(algo.replay_buffers["p0"]) == len(algo.replay_buffers["p1"]) == STEPS_PER_ITER


# -- checkpoints --------------------------------------------------------------------------------


def policy_states(algo):
    return {pid: {k: v for k, v in p.get_state().items() if k != "policy_spec"} for pid, p in algo.policies.items()}


def buffer_states(algo):
    return {pid: b.get_state() for pid, b in algo.replay_buffers.items()}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_round_trip_is_exact(tmp_path, fmt, kind):
    algo = (single(store=True) if kind == "single" else multi(store=True)).build()
    algo.train()
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    clone = Algorithm.from_checkpoint(path)
    assert type(clone) is SAC and clone.iteration == 1
    names = set(clone.policies[next(iter(clone.policies))].get_weights())
    for part in ("pi.", "q1.", "q2.", "q1_target.", "q2_target.", "log_alpha"):
        assert any(n.startswith(part) for n in names), part
    # weights (actor, critics, targets, log_alpha), all three optimizers, both generators, counters
    want = policy_states(algo)
    for states in (policy_states(clone), {pid: {k: v for k, v in s.items() if k != "policy_spec"} for pid, s in
                                          {pid: p.state for pid, p in read_checkpoint(path).policies.items()}.items()}):
        assert_tree_equal(states, want, tuples_as_lists=True)
    for state in want.values():
        assert set(state["optimizers"]) == {"actor", "critic", "alpha"}
        assert all(state["optimizers"][n]["state"] for n in ("actor", "critic", "alpha"))  # stepped
    assert_tree_equal(buffer_states(clone), buffer_states(algo), tuples_as_lists=True)
    assert clone.num_updates == algo.num_updates and clone.counters == algo.counters
    restored = (single(seed=9) if kind == "single" else multi(seed=9)).build()
    restored.restore(path)
    assert_tree_equal(policy_states(restored), want, tuples_as_lists=True)


def _sizes(path):
    info = get_checkpoint_info(path)
    manifest = json.loads(open(os.path.join(path, "checkpoint.json")).read())
    return info, {name: entry["size"] for name, entry in manifest["files"].items()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_store_replay_buffer_decides_whether_the_rows_are_saved(tmp_path, fmt):
    algo = single(store=True).build()
    for _ in range(3):
        algo.train()
    buffer = algo.replay_buffers["default_policy"]
    rows = buffer.nbytes
    assert rows == 450 * (3 * 4 * 2 + 4 + 4 + 2)  # obs, new_obs, actions, rewards, terminateds, truncateds
    with_rows = algo.save(tmp_path / "with", format=fmt).checkpoint.path
    algo.config.store_replay_buffer = False
    without = algo.save(tmp_path / "without", format=fmt).checkpoint.path
    info_with, size_with = _sizes(with_rows)
    info_without, size_without = _sizes(without)
    assert info_with["type"] == info_without["type"] == "Algorithm"
    state_file = next(n for n in size_with if n.startswith("algorithm_state"))
    assert size_with[state_file] - size_without[state_file] >= rows
    full = Algorithm.from_checkpoint(with_rows)
    empty = Algorithm.from_checkpoint(without)
    got = full.replay_buffers["default_policy"]
    assert len(got) == len(buffer) == 450 and got.cursor == buffer.cursor
    assert_tree_equal(got.get_state(), buffer.get_state(), tuples_as_lists=True)
    nothing = empty.replay_buffers["default_policy"]
    assert len(nothing) == 0 and nothing.get_state()["rng"] == buffer.get_state()["rng"]
    assert nothing.num_added == buffer.num_added
    # the rest of the state is saved either way
    assert_tree_equal(policy_states(empty), policy_states(algo), tuples_as_lists=True)
    assert empty.counters == algo.counters and empty.num_updates == algo.num_updates


@pytest.mark.parametrize("fmt", FORMATS)
def test_policy_from_checkpoint_without_an_algorithm(tmp_path, fmt, monkeypatch):
    algo = multi().build()
    algo.train()
    pol = algo.get_policy("p0")
    pol.export_checkpoint(tmp_path / "pol", format=fmt)
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    import amber.envs.registry

    def no_env(*a, **k):
        raise AssertionError("an env was built")

    monkeypatch.setattr(amber.envs.registry, "make_env", no_env)
    restored = Policy.from_checkpoint(tmp_path / "pol")
    assert type(restored) is SACTorchPolicy
    obs = np.array([0.5, -0.5, 1.0], dtype=np.float32)
    assert np.array_equal(restored.compute_single_action(obs, explore=False)[0],
                          pol.compute_single_action(obs, explore=False)[0])
    assert_tree_equal({k: v for k, v in restored.get_state().items() if k != "policy_spec"},
                      {k: v for k, v in pol.get_state().items() if k != "policy_spec"}, tuples_as_lists=True)
    both = Policy.from_checkpoint(path)
    assert sorted(both) == ["p0", "p1"]
    assert_same_weights({"p1": weights(algo)["p1"]}, {"p1": both["p1"].get_weights()})
    # it keeps sampling the same noise as the original
    assert np.array_equal(restored.compute_single_action(obs)[0], pol.compute_single_action(obs)[0])


def test_failed_restore_leaves_the_algorithm_as_it_was(tmp_path):
    donor = single(seed=1, store=True).build()
    donor.train()
    path = donor.save(tmp_path / "ck", format="msgpack").checkpoint.path
    victim = tmp_path / "ck" / "policies" / "default_policy" / "policy_state.msgpck"
    victim.write_bytes(victim.read_bytes()[:-10])
    algo = single(seed=2, store=True).build()
    algo.train()
    before, buffers, it = policy_states(algo), buffer_states(algo), algo.iteration
    with pytest.raises(CorruptCheckpointError, match="default_policy"):
        algo.restore(path)
    assert_tree_equal(policy_states(algo), before, tuples_as_lists=True)
    assert_tree_equal(buffer_states(algo), buffers, tuples_as_lists=True)
    assert algo.iteration == it


def test_restore_failing_while_applying_rolls_back(tmp_path, monkeypatch):
    donor = multi(seed=1, store=True).build()
    donor.train()
    path = donor.save(tmp_path / "ck").checkpoint.path
    algo = multi(seed=2, store=True).build()
    algo.train()
    before, objects = policy_states(algo), dict(algo.replay_buffers)
    rows = {pid: b.get_state()["columns"]["obs"].copy() for pid, b in objects.items()}
    real = ReplayBuffer.set_state

    def flaky(self, state):
        real(self, state)
        flaky.calls.append(self)
        if len(flaky.calls) == 2:  # the second buffer fails, after the policies and one buffer were set
            raise ValueError("gremlin")

    flaky.calls = []
    monkeypatch.setattr(ReplayBuffer, "set_state", flaky)
    with pytest.raises(CheckpointError, match="restoring 'replay_buffers' failed: ValueError: gremlin") as caught:
        algo.restore(path)
    assert isinstance(caught.value.__cause__, ValueError) and caught.value.__cause__.__context__ is None
    assert len(flaky.calls) > 2  # the rollback itself went through
    assert_tree_equal(policy_states(algo), before, tuples_as_lists=True)
    assert all(algo.replay_buffers[pid] is objects[pid] for pid in objects)
    for pid, obs in rows.items():
        assert np.array_equal(algo.replay_buffers[pid].get_state()["columns"]["obs"], obs)


# -- exact resume across processes --------------------------------------------------------------

RESUME = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_sac import single, multi, snapshot
    from amber.algorithms.algorithm import Algorithm
    kind, store, fmt, phase, path, out = sys.argv[1:7]
    if phase == "first":
        algo = (single if kind == "single" else multi)(seed=7, store=store == "1").build()
        for _ in range(2):
            algo.train()
        algo.save(path, format=fmt)
    else:
        algo = Algorithm.from_checkpoint(path)
        for _ in range(2):
            algo.train()
        np.savez(out, **snapshot(algo))
""")


def snapshot(algo):
    """Every weight, the buffers' rows and cursors, and the counters, as flat arrays."""
    out = {f"w/{pid}/{k}": v for pid, w in weights(algo).items() for k, v in w.items()}
    for pid, buffer in algo.replay_buffers.items():
        state = buffer.get_state()
        out[f"buffer/{pid}/meta"] = np.array([state["size"], state["cursor"], state["num_added"]])
        out.update({f"buffer/{pid}/{c}": v for c, v in state["columns"].items()})
    out["counters"] = np.array([algo.counters["num_env_steps_sampled_lifetime"],
                                algo.counters["num_env_steps_trained_lifetime"], algo.num_updates])
    return out


@pytest.mark.parametrize(("kind", "store", "fmt"), [
    ("single", True, "msgpack"), ("single", False, "pickle"), ("multi", True, "pickle"),
    ("multi", False, "msgpack"), ("single", False, "npz"), ("multi", True, "npz"),
])
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, kind, store, fmt, request):
    """With the buffer stored, the resumed run is the uninterrupted one; without it, it is the
    uninterrupted run that empties its replay buffers at the save point. Every format, the
    third-party npz one included."""
    script = RESUME.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ck, out = tmp_path / "ck", tmp_path / "w.npz"
    env = dict(os.environ)
    if fmt == "npz":  # the pip-installed third-party plugin, found through its entry point
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(request.getfixturevalue("npz_site")),
                                                          env.get("PYTHONPATH")]))
    for phase in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", script, kind, str(int(store)), fmt, phase, str(ck),
                               str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
    algo = (single if kind == "single" else multi)(seed=7, store=store).build()
    for _ in range(2):
        algo.train()
    if not store:
        algo.clear_replay_buffers()
    for _ in range(2):
        algo.train()
    got, want = np.load(out), snapshot(algo)
    assert sorted(got.files) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key
    if not store:  # the resumed run refilled the buffer from empty: fewer rows than were sampled
        pid = next(iter(algo.replay_buffers))
        assert len(algo.replay_buffers[pid]) == 2 * STEPS_PER_ITER


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_train_and_evaluate(tmp_path):
    out = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "amber.cli", "train", "--algo", "SAC", "--env", "Pendulum-v1",
                            "--stop-iters", "1", "--checkpoint-dir", str(out), "--seed", "0"],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    final = train.stdout.strip().splitlines()[-1]
    assert final == str(out / "checkpoint_000001")
    assert get_checkpoint_info(final)["policy_ids"] == ["default_policy"]
    ev = subprocess.run([sys.executable, "-m", "amber.cli", "evaluate", final, "--episodes", "2"],
                        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    mean = float(ev.stdout.split("return mean:")[1].split()[0])
    assert -2000 < mean < 0  # Pendulum's returns


def test_cli_refuses_sac_on_discrete_actions(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "amber.cli", "train", "--algo", "SAC", "--env", "CartPole-v1",
                           "--stop-iters", "1"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 2 and "Box" in proc.stderr and "Traceback" not in proc.stderr
