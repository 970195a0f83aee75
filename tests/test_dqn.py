"""DQN: config, learner maths, acting, learning, checkpoints (round trips, exact resume, subsets), export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gym = pytest.importorskip("gymnasium")

import amber  # noqa: E402
from amber.algorithms.algorithm import Algorithm  # noqa: E402
from amber.algorithms.dqn import DQN, DQNConfig  # noqa: E402
from amber.algorithms.dqn.dqn_learner import dqn_update, nstep_transitions  # noqa: E402
from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy, epsilon_at  # noqa: E402
from amber.errors import CheckpointError, CorruptCheckpointError  # noqa: E402
from amber.examples.envs.classes.multi_agent import MultiAgentCartPole  # noqa: E402
from amber.policy.policy import Policy  # noqa: E402
from amber.utils.checkpoints import convert_to_msgpack_checkpoint  # noqa: E402

FORMATS = ["pickle", "msgpack"]
SMALL = {"model": {"fcnet_hiddens": [32, 32]}, "num_steps_sampled_before_learning_starts": 100,
         "replay_buffer_config": {"capacity": 1000}, "target_network_update_freq": 150,
         "epsilon": [(0, 1.0), (400, 0.1)], "n_step": 2}
CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)


def pol_a_b(agent_id, episode, worker, **kw):
    """An importable mapping: agent 0 → pol_a, the others → pol_b."""
    return "pol_a" if agent_id == 0 else "pol_b"


amber.register_class(pol_a_b, name="tests.dqn.pol_a_b")


def single(seed=0, store=False, **training):
    return (DQNConfig().environment("CartPole-v1").training(**{**SMALL, **training})
            .reporting(min_sample_timesteps_per_iteration=200).debugging(seed=seed)
            .checkpointing(store_replay_buffer=store))


def multi(seed=0, store=False, **kw):
    return (DQNConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).training(**SMALL)
            .reporting(min_sample_timesteps_per_iteration=200).debugging(seed=seed)
            .checkpointing(store_replay_buffer=store)
            .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b, **kw))


def snapshot(algo, *, buffers=True):
    """Every piece of learner state as flat arrays: weights, targets, Adam state, counters, buffers."""
    out = {}
    for pid, policy in algo.policies.items():
        state = policy.get_state()
        for k, v in state["weights"].items():
            out[f"{pid}/w/{k}"] = v
        for k, v in state["target_weights"].items():
            out[f"{pid}/t/{k}"] = v
        opt = state["optimizer"]
        for i, s in sorted(opt["state"].items(), key=lambda kv: int(kv[0])):
            for name, arr in s.items():
                out[f"{pid}/opt/{i}/{name}"] = np.asarray(arr)
        out[f"{pid}/generator"] = state["generator"]
        out[f"{pid}/counters"] = np.array([state["global_timestep"], state["num_grad_updates"]])
        if buffers:
            buf = algo.replay_buffers[pid]
            out[f"{pid}/buffer/meta"] = np.array([len(buf), buf.cursor, buf.num_added])
            for k, v in (buf.get_state().get("columns") or {}).items():
                out[f"{pid}/buffer/{k}"] = np.asarray(v)
            out[f"{pid}/buffer/next"] = np.asarray(
                json.dumps(buf.rng.bit_generator.state, sort_keys=True).encode())
        out[f"{pid}/last_target_update"] = np.array(algo.last_target_update.get(pid, -1))
    out["counters"] = np.array([algo.iteration, algo.num_updates, *[
        algo.counters[k] for k in ("num_env_steps_sampled_lifetime", "num_env_steps_trained_lifetime")]])
    return out


def assert_same(a, b, keys=None):
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b)
    for k in keys:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path / "results"))


# -- config --------------------------------------------------------------------------------------


def test_rllib_names_and_defaults():
    cfg = DQNConfig()
    assert (cfg.lr, cfg.train_batch_size, cfg.gamma, cfg.grad_clip) == (5e-4, 32, 0.99, 40.0)
    assert cfg.replay_buffer_config == {"capacity": 50_000}
    assert (cfg.double_q, cfg.dueling, cfg.n_step, cfg.training_intensity) == (True, True, 1, None)
    assert cfg.epsilon == [(0, 1.0), (10_000, 0.05)]
    assert cfg.min_sample_timesteps_per_iteration == 1000 and cfg.store_replay_buffer is False
    cfg.training(target_network_update_freq=100, num_steps_sampled_before_learning_starts=10,
                 training_intensity=16, n_step=3).env_runners(rollout_fragment_length=8)
    back = DQNConfig.from_dict(cfg.to_dict())
    assert type(back) is DQNConfig and back.to_dict() == cfg.to_dict()


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="'target_network_update_frq'.*target_network_update_freq"):
        DQNConfig().training(target_network_update_frq=10)
    with pytest.raises(ValueError, match="'clip_param'"):
        DQNConfig().training(clip_param=0.2)  # a PPO setting


def test_box_action_space_is_refused_clearly():
    with pytest.raises(ValueError, match="Discrete action space.*Box.*SAC"):
        DQNConfig().environment("Pendulum-v1").build()


@pytest.mark.parametrize(("training", "match"), [
    ({"n_step": 0}, "n_step=0"),
    ({"epsilon": [(0, 1.0), (0, 0.5)]}, "increase"),
    ({"epsilon": [(0, 1.5)]}, r"\[0, 1\]"),
    ({"epsilon": 0.1}, "'epsilon' must be list"),
    ({"replay_buffer_config": {"capacity": 100, "prioritized_replay_alpha": 0.6}}, "prioritized_replay_alpha"),
    ({"replay_buffer_config": {"type": "MultiAgentPrioritizedReplayBuffer"}}, "prioritized"),
    ({"replay_buffer_config": {"capacity": 0}}, "capacity"),
    ({"replay_buffer_config": {"capacity": None}}, r"capacity.*positive int, got None"),
    ({"replay_buffer_config": {"capacity": 1e4}}, r"capacity.*positive int, got 10000.0"),  # as SAC
    ({"training_intensity": 0}, "training_intensity"),
])
def test_bad_values_are_named(training, match):
    with pytest.raises(ValueError, match=match):
        DQNConfig().environment("CartPole-v1").training(**training).build()


# -- learner maths ----------------------------------------------------------------------------------


def fragment(rewards, terminated=False, truncated=False):
    n = len(rewards)
    return {"obs": np.arange(n, dtype=np.float32)[:, None], "new_obs": np.arange(1, n + 1, dtype=np.float32)[:, None],
            "actions": np.arange(n) % 2, "rewards": np.asarray(rewards, dtype=np.float32),
            "terminateds": np.eye(1, n, n - 1, dtype=bool)[0] & terminated,
            "truncateds": np.eye(1, n, n - 1, dtype=bool)[0] & truncated}


def test_one_step_transitions_are_the_fragment():
    frag = fragment([1.0, 2.0, 3.0], terminated=True)
    rows = nstep_transitions(frag, 1, 0.9)
    assert np.array_equal(rows["rewards"], frag["rewards"]) and np.array_equal(rows["new_obs"], frag["new_obs"])
    assert rows["terminateds"].tolist() == [False, False, True]
    assert np.allclose(rows["discounts"], 0.9)


@pytest.mark.parametrize("end", ["terminated", "truncated", "open"])
def test_n_step_returns_shorten_at_the_end_with_their_own_discount(end):
    g = 0.5
    frag = fragment([1.0, 2.0, 4.0, 8.0], terminated=end == "terminated", truncated=end == "truncated")
    rows = nstep_transitions(frag, 3, g)
    assert np.allclose(rows["rewards"], [1 + g * 2 + g * g * 4, 2 + g * 4 + g * g * 8, 4 + g * 8, 8])
    assert np.allclose(rows["discounts"], [g ** 3, g ** 3, g ** 2, g])
    assert rows["new_obs"][:, 0].tolist() == [3.0, 4.0, 4.0, 4.0]  # the step the sum ends at
    assert rows["terminateds"].tolist() == [False, True, True, True] if end == "terminated" else [False] * 4
    assert rows["obs"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and rows["actions"].tolist() == [0, 1, 0, 1]


def dqn_policy(seed=0, **config):
    return DQNTorchPolicy(CARTPOLE_OBS, gym.spaces.Discrete(3),
                          {"model": {"fcnet_hiddens": [16], "fcnet_activation": "relu"}, "lr": 1e-3,
                           "seed": seed, **config})


def replay_batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": rng.normal(size=(n, 4)).astype(np.float32), "new_obs": rng.normal(size=(n, 4)).astype(np.float32),
            "actions": rng.integers(0, 3, n), "rewards": rng.normal(size=n).astype(np.float32),
            "discounts": np.full(n, 0.9, np.float32), "terminateds": rng.random(n) < 0.3}


@pytest.mark.parametrize("double_q", [True, False])
def test_td_loss_is_huber_against_the_double_q_target(double_q):
    policy = dqn_policy()
    with torch.no_grad():  # make the target network differ from the online one
        for p in policy.target_model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    batch = replay_batch()
    with torch.no_grad():
        q = policy.model(torch.from_numpy(batch["obs"])).numpy().astype(np.float64)
        q_next_online = policy.model(torch.from_numpy(batch["new_obs"])).numpy()
        q_next_target = policy.target_model(torch.from_numpy(batch["new_obs"])).numpy().astype(np.float64)
    best = (q_next_online if double_q else q_next_target).argmax(1)
    targets = batch["rewards"] + batch["discounts"] * ~batch["terminateds"] * q_next_target[np.arange(16), best]
    td = q[np.arange(16), batch["actions"]] - targets
    huber = np.where(np.abs(td) <= 1.0, 0.5 * td ** 2, np.abs(td) - 0.5).mean()
    before = policy.get_weights()
    stats = dqn_update(policy, batch, double_q=double_q, grad_clip=None)
    assert stats["loss"] == pytest.approx(huber, rel=1e-5)
    assert stats["mean_td_error"] == pytest.approx(td.mean(), rel=1e-4, abs=1e-6)
    assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())
    assert policy.num_grad_updates == 1
    # the two choices of a* differ on this batch, so the test tells them apart
    assert (q_next_online.argmax(1) != q_next_target.argmax(1)).any()


def test_q_values_converge_to_terminal_rewards():
    policy = dqn_policy(lr=1e-2)
    batch = replay_batch(n=8)
    batch["terminateds"][:] = True
    for _ in range(400):
        dqn_update(policy, batch, double_q=True, grad_clip=40.0)
    q = policy.compute_q_values(batch["obs"])[np.arange(8), batch["actions"]]
    assert np.allclose(q, batch["rewards"], atol=0.05)


def test_grad_clip_bounds_the_update():
    batch = replay_batch()
    batch["rewards"] *= 1000.0
    free, clipped = dqn_policy(), dqn_policy()
    w0 = free.get_weights()
    dqn_update(free, batch, double_q=True, grad_clip=None)
    stats = dqn_update(clipped, batch, double_q=True, grad_clip=1e-3)
    assert stats["grad_gnorm"] > 1e-3
    # Adam normalises step sizes, so compare the first moments it kept: clipping shrinks them
    m_free = free.optimizer.state_dict()["state"][0]["exp_avg"].abs().max()
    m_clip = clipped.optimizer.state_dict()["state"][0]["exp_avg"].abs().max()
    assert m_clip < m_free
    assert any(not np.array_equal(w0[k], v) for k, v in clipped.get_weights().items())


# -- acting ----------------------------------------------------------------------------------------------


def test_epsilon_schedule_is_piecewise_linear():
    schedule = [(0, 1.0), (100, 0.1), (200, 0.0)]
    assert [epsilon_at(schedule, t) for t in (0, 50, 100, 150, 200, 10_000)] == pytest.approx(
        [1.0, 0.55, 0.1, 0.05, 0.0, 0.0])
    assert epsilon_at([(10, 0.3)], 0) == 0.3


def test_explore_is_epsilon_greedy_and_greedy_does_not_advance_the_schedule():
    policy = dqn_policy(epsilon=[(0, 0.5), (10**9, 0.5)])
    obs = np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32)
    greedy, _, extra = policy.compute_actions(obs, explore=False)
    assert policy.global_timestep == 0
    assert np.array_equal(greedy, extra["q_values"].argmax(1)) and extra["action_dist_inputs"].shape == (4000, 3)
    explored, _, _ = policy.compute_actions(obs, explore=True)
    assert policy.global_timestep == 4000
    # random with probability 0.5, and then a uniform action that is the greedy one a third of the time
    changed = float(np.mean(explored != greedy))
    assert abs(changed - 0.5 * 2 / 3) < 0.03
    assert set(np.unique(explored)) == {0, 1, 2}


def test_epsilon_reaches_its_final_value():
    policy = dqn_policy(epsilon=[(0, 1.0), (100, 0.0)])
    obs = np.zeros((1, 4), np.float32)
    for _ in range(100):
        policy.compute_actions(obs)
    assert policy.cur_epsilon == 0.0
    greedy = policy.compute_single_action(obs[0], explore=False)[0]
    assert all(policy.compute_single_action(obs[0])[0] == greedy for _ in range(50))


def test_single_observation_fast_path_matches_the_batched_path():
    for dueling in (True, False):
        policy = dqn_policy(dueling=dueling)
        obs = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
        batched = policy.compute_q_values(obs)
        singles = np.concatenate([policy.compute_q_values(o[None]) for o in obs])
        assert np.allclose(batched, singles, atol=1e-6)
        dqn_update(policy, replay_batch(), double_q=True, grad_clip=None)  # the fast path sees new weights
        with torch.no_grad():
            want = policy.model(torch.from_numpy(obs[:1])).numpy()
        assert np.allclose(policy.compute_q_values(obs[:1]), want, atol=1e-6)


@pytest.mark.parametrize("dueling", [True, False])
@pytest.mark.parametrize("obs_space", ["box", "discrete"])
def test_export_graph_agrees_with_the_model(dueling, obs_space):
    space = CARTPOLE_OBS if obs_space == "box" else gym.spaces.Discrete(5, start=2)
    policy = DQNTorchPolicy(space, gym.spaces.Discrete(3), {"model": {"fcnet_hiddens": [16, 8]}, "seed": 0,
                                                            "dueling": dueling})
    dqn_update(policy, {**replay_batch(), **({} if obs_space == "box" else {
        "obs": np.arange(16) % 5 + 2, "new_obs": (np.arange(16) + 1) % 5 + 2})}, double_q=True, grad_clip=None)
    obs = (np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32) if obs_space == "box"
           else np.arange(7) % 5 + 2)
    graph = policy.export_graph()
    assert graph.output_names == ["action_dist_inputs"]
    assert graph.outputs[0].kind == ("dueling" if dueling else "identity")
    assert graph.info["action_distribution"] == "q_values"
    got = graph.forward_numpy(obs)["action_dist_inputs"]
    with torch.no_grad():
        want = policy.model(policy.obs_to_tensor(obs)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-5


def test_discrete_observations_learn_on_frozen_lake():
    algo = (DQNConfig().environment("FrozenLake-v1", env_config={"is_slippery": False})
            .training(model={"fcnet_hiddens": [16]}, num_steps_sampled_before_learning_starts=50)
            .reporting(min_sample_timesteps_per_iteration=100).debugging(seed=0).build())
    result = algo.train()
    assert result["num_updates_this_iter"] > 0
    action = algo.get_policy().compute_single_action(0, explore=False)[0]
    assert action in range(4)


# -- training ------------------------------------------------------------------------------------------------


def test_return_rises_over_the_first_iterations():
    algo = (DQNConfig().environment("CartPole-v1")
            .training(model={"fcnet_hiddens": [64, 64]}, lr=1e-3, epsilon=[(0, 1.0), (3000, 0.02)],
                      num_steps_sampled_before_learning_starts=500, target_network_update_freq=250,
                      training_intensity=16)
            .debugging(seed=0).build())
    first = algo.train()["episode_return_mean"]
    for _ in range(5):
        last = algo.train()
    assert last["episode_return_mean"] > 2 * first, (first, last["episode_return_mean"])
    assert last["num_env_steps_sampled_lifetime"] == 6000


def test_learning_waits_for_the_buffer_and_counts_updates():
    algo = single(num_steps_sampled_before_learning_starts=300).build()
    r1 = algo.train()  # 200 steps sampled: not yet
    assert r1["num_updates_this_iter"] == 0 and algo.get_policy().num_grad_updates == 0
    r2 = algo.train()
    assert r2["num_updates_this_iter"] == 26  # one per round: the rounds ending at 300, 304, ..., 400
    stats = r2["info"]["learner"]["default_policy"]["learner_stats"]
    assert {"loss", "mean_q", "cur_epsilon", "last_target_update_ts"} <= set(stats)
    assert r2["num_env_steps_trained_lifetime"] == 26 * 32


def test_learning_starts_counts_sampled_steps_past_a_smaller_buffer(tmp_path):
    """A buffer smaller than num_steps_sampled_before_learning_starts: learning starts once that many
    steps were sampled (not never); after a restore without the rows it refills to capacity first."""
    algo = single(num_steps_sampled_before_learning_starts=300, replay_buffer_config={"capacity": 100}).build()
    assert algo.train()["num_updates_this_iter"] == 0  # 200 steps sampled
    assert algo.train()["num_updates_this_iter"] == 26  # the rounds ending at 300, 304, ..., 400
    assert len(algo.replay_buffers["default_policy"]) == 100
    resumed = Algorithm.from_checkpoint(algo.save(tmp_path / "ck").checkpoint.path)
    algo.clear_replay_buffers()  # what the restore lost
    for a in (algo, resumed):  # 100 rows again at 500: the rounds ending at 500, ..., 600
        assert a.train()["num_updates_this_iter"] == 26
    assert_same(snapshot(algo), snapshot(resumed))


def test_training_intensity_sets_the_replay_ratio():
    algo = single(training_intensity=64).build()  # 64 replayed rows per sampled step: 2 updates per step
    algo.train()
    assert algo.train()["num_updates_this_iter"] == 2 * 200


def test_target_network_syncs_every_target_network_update_freq_steps():
    never = single(target_network_update_freq=10**9).build()
    target0 = never.get_policy().get_target_weights()
    never.train()
    never.train()
    pol = never.get_policy()
    assert all(np.array_equal(target0[k], v) for k, v in pol.get_target_weights().items())
    assert any(not np.array_equal(target0[k], v) for k, v in pol.get_weights().items())
    always = single(target_network_update_freq=0).build()
    always.train()
    pol = always.get_policy()
    assert all(np.array_equal(pol.get_weights()[k], v) for k, v in pol.get_target_weights().items())
    every = single(target_network_update_freq=150).build()
    every.train()
    every.train()
    # rounds end at multiples of 4 env steps; syncs at the first round 150 steps after the last (from 0):
    # 152, then 304; the next would be at 456, after the 400 steps of two iterations
    assert every.last_target_update["default_policy"] == 304


def test_seeded_runs_are_identical():
    a, b = single(seed=3).build(), single(seed=3).build()
    for _ in range(2):
        a.train()
        b.train()
    assert_same(snapshot(a), snapshot(b))


def test_policies_to_train_leaves_the_others_unchanged():
    algo = multi(policies_to_train=["pol_a"]).build()
    algo.train()
    before = snapshot(algo, buffers=False)
    algo.train()
    after = snapshot(algo, buffers=False)
    frozen = [k for k in before if k.startswith("pol_b/") and ("/w/" in k or "/t/" in k or "/opt/" in k)]
    assert frozen and all(np.array_equal(before[k], after[k]) for k in frozen)
    assert algo.get_policy("pol_b").num_grad_updates == 0
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("pol_a/w/"))


# -- checkpoints ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("store", [False, True], ids=["no_buffer", "buffer"])
def test_round_trip_is_exact(tmp_path, fmt, kind, store):
    algo = (single if kind == "single" else multi)(store=store).build()
    algo.train()
    algo.train()
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    clone = Algorithm.from_checkpoint(path)
    assert type(clone) is DQN and clone.iteration == 2
    assert all(type(p) is DQNTorchPolicy for p in clone.policies.values())
    want, got = snapshot(algo), snapshot(clone)
    if store:
        assert_same(want, got)
    else:
        for pid in algo.policies:
            assert len(clone.replay_buffers[pid]) == 0
            assert clone.replay_buffers[pid].num_added == algo.replay_buffers[pid].num_added
        keep = [k for k in want if "/buffer/" not in k]
        assert_same({k: want[k] for k in keep}, {k: got[k] for k in keep})
    restored = (single if kind == "single" else multi)(seed=9, store=store).build()
    restored.restore(path)
    assert_same({k: v for k, v in snapshot(restored).items() if store or "/buffer/" not in k},
                {k: v for k, v in want.items() if store or "/buffer/" not in k})


def test_stored_buffer_is_in_the_checkpoint_only_when_asked(tmp_path):
    sizes = {}
    for store in (False, True):
        algo = single(store=store).build()
        algo.train()
        path = algo.save(tmp_path / f"ck{store}").checkpoint.path
        sizes[store] = sum(f.stat().st_size for f in (tmp_path / f"ck{store}").rglob("algorithm_state.*"))
        assert len(Algorithm.from_checkpoint(path).replay_buffers["default_policy"]) == (200 if store else 0)
    assert sizes[True] > sizes[False] + 200 * (4 + 4) * 4  # at least the obs and new_obs columns


def test_docs_example_gives_identical_algorithms(tmp_path):
    """The seed's example: save pickle, convert to msgpack, from_checkpoint: algo1 and algo2 are identical."""
    algo1 = DQNConfig().environment("CartPole-v1").build()
    algo1.train()
    pickle_dir, msgpack_dir = tmp_path / "pickle", tmp_path / "msgpack"
    algo1.save(checkpoint_dir=pickle_dir)
    convert_to_msgpack_checkpoint(pickle_dir, msgpack_dir)
    algo2 = Algorithm.from_checkpoint(msgpack_dir)
    assert type(algo2) is DQN
    want, got = snapshot(algo1), snapshot(algo2)
    keep = [k for k in want if "/buffer/" not in k]  # store_replay_buffer is off by default
    assert_same({k: want[k] for k in keep}, {k: got[k] for k in keep})
    assert algo2.counters == algo1.counters
    assert algo2.get_policy().get_state()["optimizer"]["state"]  # Adam state present (it trained)
    obs = np.array([0.0, 0.1, 0.2, 0.3], dtype=np.float32)
    assert (algo1.get_policy().compute_single_action(obs, explore=False)[0]
            == algo2.get_policy().compute_single_action(obs, explore=False)[0])


@pytest.mark.parametrize("store", [False, True], ids=["no_buffer", "buffer"])
def test_subset_restore(tmp_path, store):
    algo = multi(store=store).build()
    algo.train()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    (tmp_path / "ck" / "policies" / "pol_b" / "policy_state.msgpck").unlink()  # never read
    only_a = Algorithm.from_checkpoint(path, policy_ids=["pol_a"],
                                       policy_mapping_fn=lambda aid, ep, w, **kw: "pol_a")
    assert only_a.get_policy("pol_b") is None and set(only_a.replay_buffers) == {"pol_a"}
    want = {k: v for k, v in snapshot(algo).items() if k.startswith("pol_a/") and (store or "/buffer/" not in k)}
    got = {k: v for k, v in snapshot(only_a).items() if k.startswith("pol_a/") and (store or "/buffer/" not in k)}
    assert_same(want, got)
    only_a.train()
    assert only_a.get_policy("pol_a").num_grad_updates > algo.get_policy("pol_a").num_grad_updates


@pytest.mark.parametrize("fmt", FORMATS)
def test_policy_from_checkpoint_acts_greedily_the_same(tmp_path, fmt):
    algo = multi().build()
    algo.train()
    algo.train()
    pol = algo.get_policy("pol_a")
    pol.export_checkpoint(tmp_path / "pol", format=fmt)
    restored = Policy.from_checkpoint(tmp_path / "pol")
    assert type(restored) is DQNTorchPolicy
    obs = np.random.default_rng(0).normal(scale=0.1, size=(64, 4)).astype(np.float32)
    assert np.array_equal(restored.compute_actions(obs, explore=False)[0], pol.compute_actions(obs, explore=False)[0])
    assert np.array_equal(restored.compute_q_values(obs), pol.compute_q_values(obs))
    for o in obs[:8]:
        assert restored.compute_single_action(o, explore=False)[0] == pol.compute_single_action(o, explore=False)[0]
    assert restored.global_timestep == pol.global_timestep and restored.cur_epsilon == pol.cur_epsilon
    assert all(np.array_equal(pol.get_target_weights()[k], v) for k, v in restored.get_target_weights().items())
    # exploring continues the same random stream
    assert np.array_equal(restored.compute_actions(obs)[0], pol.compute_actions(obs)[0])
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    both = Policy.from_checkpoint(path)
    assert sorted(both) == ["pol_a", "pol_b"] and all(type(p) is DQNTorchPolicy for p in both.values())


def test_failed_restore_leaves_the_algorithm_as_it_was(tmp_path):
    donor = multi(seed=1, store=True).build()
    donor.train()
    path = donor.save(tmp_path / "ck", format="msgpack").checkpoint.path
    victim = tmp_path / "ck" / "policies" / "pol_b" / "policy_state.msgpck"
    victim.write_bytes(victim.read_bytes()[:-10])
    algo = multi(seed=2, store=True).build()
    algo.train()
    before = snapshot(algo)
    with pytest.raises(CorruptCheckpointError, match="pol_b"):
        algo.restore(path)
    assert_same(before, snapshot(algo))


def test_a_bad_buffer_state_rolls_everything_back(tmp_path):
    donor = multi(seed=1, store=True).build()
    donor.train()
    state = donor.get_state()
    state["algorithm"]["components"]["replay_buffers"]["pol_b"]["size"] = 10**9  # invalid
    algo = multi(seed=2, store=True).build()
    algo.train()
    before, buffers = snapshot(algo), dict(algo.replay_buffers)
    with pytest.raises(CheckpointError, match="replay_buffers.*replay buffer"):
        algo.set_state(state)
    assert_same(before, snapshot(algo))
    assert all(algo.replay_buffers[pid] is buf for pid, buf in buffers.items())
    algo.train()  # still works


def test_add_and_remove_policy():
    algo = multi().build()
    algo.add_policy("pol_c", policy_mapping_fn=lambda aid, ep, w, **kw: "pol_c", policies_to_train=["pol_c"])
    assert type(algo.get_policy("pol_c")) is DQNTorchPolicy and "pol_c" in algo.replay_buffers
    algo.train()
    assert len(algo.replay_buffers["pol_c"]) == algo.counters["num_agent_steps_sampled_lifetime"] and algo.get_policy("pol_c").num_grad_updates > 0
    algo.remove_policy("pol_c", policy_mapping_fn=pol_a_b, policies_to_train=["pol_a", "pol_b"])
    assert "pol_c" not in algo.replay_buffers and "pol_c" not in algo.last_target_update
    algo.train()


# -- exact resume across processes ---------------------------------------------------------------------------

RESUME = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from tests.test_dqn import single, multi, snapshot
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


@pytest.mark.parametrize(("kind", "store", "fmt"), [
    ("single", True, "msgpack"), ("single", False, "pickle"), ("multi", True, "pickle"), ("multi", False, "msgpack"),
    ("single", True, "npz"), ("multi", False, "npz"),
])
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, kind, store, fmt, request):
    """With the buffer stored: equal to the uninterrupted run. Without: equal to the uninterrupted run
    that empties its replay buffers (``clear_replay_buffers()``) at the save point. Every format,
    the third-party npz one included."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = RESUME.format(root=root)
    ck, out = tmp_path / "ck", tmp_path / "w.npz"
    env = dict(os.environ)
    if fmt == "npz":  # the pip-installed third-party plugin, found through its entry point
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(request.getfixturevalue("npz_site")),
                                                          env.get("PYTHONPATH")]))
    for phase in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", script, kind, "1" if store else "0", fmt, phase, str(ck),
                               str(out)], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
    algo = (single if kind == "single" else multi)(seed=7, store=store).build()
    for _ in range(2):
        algo.train()
    if not store:
        algo.clear_replay_buffers()
    for _ in range(2):
        algo.train()
    got = np.load(out)
    want = snapshot(algo)
    assert sorted(got.files) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key
    # the check has teeth: the policies learned after the resume point
    assert all(algo.get_policy(pid).num_grad_updates > 0 for pid in algo.policies)


def test_without_the_buffer_a_resumed_run_differs_from_one_that_kept_it(tmp_path):
    a = single(seed=7).build()
    for _ in range(2):
        a.train()
    path = a.save(tmp_path / "ck").checkpoint.path
    b = Algorithm.from_checkpoint(path)
    a.train()
    b.train()
    assert not all(np.array_equal(a.get_policy().get_weights()[k], v)
                   for k, v in b.get_policy().get_weights().items())


# -- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_train_and_evaluate_dqn(tmp_path):
    def amber(*args):
        return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=600)

    out = tmp_path / "run"
    proc = amber("train", "--algo", "DQN", "--env", "CartPole-v1", "--stop-iters", "2",
                 "--checkpoint-dir", str(out), "--format", "msgpack", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    final = proc.stdout.strip().splitlines()[-1]
    assert final == str(out / "checkpoint_000002")
    algo = Algorithm.from_checkpoint(final, allow_pickle=False)
    assert type(algo) is DQN and algo.counters["num_env_steps_sampled_lifetime"] == 2000
    ev = amber("evaluate", final, "--episodes", "2")
    assert ev.returncode == 0, ev.stderr
    assert "return mean" in ev.stdout
    bad = amber("train", "--algo", "DQN", "--env", "Pendulum-v1", "--stop-iters", "1")
    assert bad.returncode == 2 and "Discrete" in bad.stderr and "Traceback" not in bad.stderr


def test_restore_into_a_trained_algorithm_then_training_is_exact(tmp_path):
    """Restoring over live optimizer state (and its flat Adam buffers) trains on exactly like the original."""
    original = single(seed=1, store=True).build()
    original.train()
    original.train()
    path = original.save(tmp_path / "ck").checkpoint.path
    other = single(seed=2, store=True).build()
    other.train()
    other.train()
    other.restore(path)
    original.train()
    other.train()
    assert_same(snapshot(original), snapshot(other))
