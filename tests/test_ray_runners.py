"""Env runners as Ray actors (``num_env_runners > 0``) on a real local Ray, one session for the module:
parallel sampling that is deterministic per seed and N, exact resume across processes, a killed
runner rebuilt, multi-agent."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from amber.algorithms.ppo import PPOConfig  # noqa: E402
from amber.envs import register_env  # noqa: E402
from amber.errors import CheckpointError  # noqa: E402
from amber.examples.envs.classes.multi_agent import MultiAgentCartPole  # noqa: E402

SMALL = {"train_batch_size": 128, "minibatch_size": 64, "num_epochs": 1, "model": {"fcnet_hiddens": [16]}}


def cartpole(seed=3, runners=2, envs=2):
    return (PPOConfig().environment("CartPole-v1").training(**SMALL).debugging(seed=seed)
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs, num_cpus_per_env_runner=0.5)
            .reporting(log_results=False))


def pol_a_b(agent_id, episode, worker, **kw):
    """Agent 0 → pol_a, the others → pol_b."""
    return "pol_a" if agent_id == 0 else "pol_b"


def weights(algo):
    return {f"{pid}/{k}": v for pid, p in algo.policies.items() for k, v in p.get_weights().items()}


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """One local Ray (2 CPUs) for every test here."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(__file__)}})
    yield
    ray.shutdown()


def _train(config, n):
    algo = config.build()
    try:
        results = [algo.train() for _ in range(n)]
        return algo, results
    except BaseException:
        algo.stop()
        raise


def test_two_runners_train_ppo_on_cartpole_deterministically():
    """The same seed and N give the same weights; the steps come from both actors."""
    a, results = _train(cartpole(), 2)
    b, _ = _train(cartpole(), 2)
    try:
        assert a.env_runner.num_runners == 2 and len(a.env_runner.actors) == 2
        assert results[-1]["num_env_steps_sampled_lifetime"] >= 2 * 128
        assert results[-1]["episodes_total"] > 0
        assert_same(weights(a), weights(b))
        # the learner's policy counts the timesteps the remote copies acted on
        assert a.get_policy().global_timestep == results[-1]["num_agent_steps_sampled_lifetime"]
    finally:
        a.stop()
        b.stop()


def test_two_runners_train_multi_agent_cartpole():
    config = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).training(**SMALL)
              .debugging(seed=1).reporting(log_results=False)
              .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b)
              .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5))
    algo, results = _train(config, 2)
    try:
        assert set(results[-1]["policy_return_mean"]) == {"pol_a", "pol_b"}
        assert set(results[-1]["info"]["learner"]) == {"pol_a", "pol_b"}
        assert results[-1]["num_agent_steps_sampled_lifetime"] > results[-1]["num_env_steps_sampled_lifetime"]
    finally:
        algo.stop()


def _marking_creator(env_config):
    """Leaves a file named after the EnvContext of each env built (in the runners' processes too)."""
    name = f"{env_config.worker_index}-{env_config.vector_index}-{env_config.num_workers}-{env_config.remote}"
    with open(os.path.join(env_config["dir"], name), "w"):
        pass
    return gym.make("CartPole-v1")


def test_remote_runners_give_env_creators_their_worker_and_vector_index(tmp_path):
    """RLlib's EnvContext: worker_index 1..N on the Ray runners (0 in the algorithm's process, which
    builds one env to read its spaces), vector_index 0..M-1, num_workers N."""
    register_env("amber-test-marking", _marking_creator)
    config = (cartpole(runners=2, envs=2).environment("amber-test-marking", env_config={"dir": str(tmp_path)}))
    algo, _ = _train(config, 1)
    algo.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0-0-2-False", "1-0-2-False", "1-1-2-False", "2-0-2-False", "2-1-2-False"]


@pytest.mark.parametrize(("runners", "envs", "multi"), [(2, 3, False), (3, 1, True)])
def test_runners_sample_exactly_train_batch_size(runners, envs, multi):
    """One train() samples exactly train_batch_size env steps, shared out over the runners and their
    env copies (env steps, not agent steps, in multi-agent)."""
    config = cartpole(runners=runners, envs=envs).training(train_batch_size=1001)
    if multi:
        config = (config.environment(MultiAgentCartPole, env_config={"num_agents": 2})
                  .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b))
    algo, results = _train(config, 2)
    try:
        assert [r["num_env_steps_sampled_lifetime"] for r in results] == [1001, 2002]
        if multi:
            assert results[-1]["num_agent_steps_sampled_lifetime"] > 2002
    finally:
        algo.stop()


RESUME = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_ray_runners import weights
    from amber.algorithms.algorithm import Algorithm
    path, out = sys.argv[1:3]
    algo = Algorithm.from_checkpoint(path)  # a fresh process: amber starts its own Ray, quietly
    assert algo.config.num_env_runners == 2 and algo.env_runner.num_runners == 2
    algo.train()
    algo.train()
    np.savez(out, **weights(algo))
    algo.stop()
""")


def test_resume_with_two_runners_in_a_fresh_process_is_exact(tmp_path):
    """Train 1, save, restore in a new process with a fresh Ray, train 2 = train 3 straight."""
    ck, out = tmp_path / "ck", tmp_path / "w.npz"
    algo, _ = _train(cartpole(), 1)
    algo.save(ck, format="msgpack")
    for _ in range(2):
        algo.train()
    want = weights(algo)
    algo.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-c", RESUME.format(tests=os.path.dirname(__file__)), str(ck), str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    assert_same({k: got[k] for k in got.files}, want)


def test_a_killed_runner_is_rebuilt_and_the_iteration_completes():
    algo, _ = _train(cartpole(), 1)
    try:
        before = algo.counters["num_env_steps_sampled_lifetime"]
        ray.kill(algo.env_runner.actors[0])
        result = algo.train()
        assert algo.env_runner.num_restarts == 1
        assert result["num_env_steps_sampled_lifetime"] - before >= 128
        ray.kill(algo.env_runner.actors[1])
        assert algo.get_state()["algorithm"]["components"]["env_runner"]["remote_runners"]  # also rebuilt
        assert algo.env_runner.num_restarts == 2
    finally:
        algo.stop()


def test_without_restarts_a_killed_runner_fails_the_iteration():
    algo = cartpole(runners=1, envs=1).fault_tolerance(restart_failed_env_runners=False).build()
    try:
        ray.kill(algo.env_runner.actors[0])
        with pytest.raises(RuntimeError, match="restart_failed_env_runners"):
            algo.train()
    finally:
        algo.stop()


def test_a_checkpoint_of_two_runners_restored_in_process(tmp_path):
    """restore() puts every runner back; into an algorithm with another N, the episodes restart."""
    algo, _ = _train(cartpole(), 1)
    try:
        algo.save(tmp_path / "ck")
        state = algo.env_runner.get_state()
        algo.train()
        algo.restore(tmp_path / "ck")
        restored = algo.env_runner.get_state()["remote_runners"]
        assert [r["env_runner"]["next_eps_id"] for r in restored] == \
            [r["env_runner"]["next_eps_id"] for r in state["remote_runners"]]
        bad = algo.get_state()
        bad["algorithm"]["components"]["env_runner"]["remote_runners"][0]["env_runner"]["next_eps_id"] = 999
        bad["algorithm"]["components"]["env_runner"]["remote_runners"][1]["generators"] = 5
        with pytest.raises(CheckpointError, match="env_runner"):
            algo.set_state(bad)  # all or nothing: runner 1 had already taken its state
        after = algo.env_runner.get_state()["remote_runners"]
        assert [r["env_runner"]["next_eps_id"] for r in after] == [r["env_runner"]["next_eps_id"] for r in restored]
    finally:
        algo.stop()
    local = cartpole(runners=0).build()
    try:
        with pytest.warns(UserWarning, match="num_env_runners=2"):
            local.restore(tmp_path / "ck")
        local.train()
    finally:
        local.stop()


def test_the_sampling_benchmark_runs(capsys, monkeypatch):
    """benchmarks/sampling_throughput.py --smoke, on this module's Ray."""
    bench = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks")
    monkeypatch.syspath_prepend(bench)
    rows = runpy.run_path(os.path.join(bench, "sampling_throughput.py"))["main"](["--smoke"])
    assert [r["runners"] for r in rows] == [0, 1] and all(r["steps_per_s"] > 0 for r in rows)
    assert "| CartPole-v1 | 1 |" in capsys.readouterr().out


class CrashOnce(gym.Wrapper):
    """CartPole whose first remote copy to take 30 steps ends its process (once: a marker file says so)."""

    def __init__(self, config):
        super().__init__(gym.make("CartPole-v1"))
        self.marker, self.driver, self.steps = config["marker"], config["driver_pid"], 0

    def step(self, action):
        self.steps += 1
        if self.steps == 30 and os.getpid() != self.driver:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)  # the actor dies in the middle of sample()
        return self.env.step(action)


def test_a_runner_that_dies_while_sampling_is_rebuilt(tmp_path):
    register_env("crash_once_cartpole", CrashOnce)
    config = (cartpole(envs=1).environment("crash_once_cartpole",
                                           env_config={"marker": str(tmp_path / "crashed"), "driver_pid": os.getpid()}))
    algo, results = _train(config, 1)
    try:
        assert (tmp_path / "crashed").exists() and algo.env_runner.num_restarts == 1
        assert results[0]["num_env_steps_sampled_lifetime"] >= 128
    finally:
        algo.stop()


def test_dqn_with_two_runners_counts_timesteps_and_updates_per_round():
    from amber.algorithms.dqn import DQNConfig

    config = (DQNConfig().environment("CartPole-v1").debugging(seed=0).reporting(log_results=False)
              .training(train_batch_size=32, model={"fcnet_hiddens": [16]}, num_steps_sampled_before_learning_starts=64)
              .reporting(min_sample_timesteps_per_iteration=200)
              .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5))
    algo, results = _train(config, 1)
    try:
        sampled = results[0]["num_env_steps_sampled_lifetime"]
        assert sampled == 200 and algo.get_policy().global_timestep == sampled
        # a round is rollout_fragment_length (4) steps of every env copy on both runners: 8 env
        # steps, one update each once 64 were sampled (the rounds ending at 64, 72, ..., 200)
        assert results[0]["num_updates_lifetime"] == (200 - 64) // 8 + 1
    finally:
        algo.stop()


def test_tf2_policies_on_remote_runners_draw_their_own_actions():
    """tf2 policies (numpy action generators) on 2 runners: each runner's generator is seeded from
    the runner's index (not the same stream twice), and a runner state restores exactly."""
    pytest.importorskip("tensorflow")
    algo = cartpole(seed=4).framework("tf2").build()
    try:
        algo.train()
        runners = algo.env_runner.get_state()["remote_runners"]
        first, second = (r["generators"]["default_policy"]["generator"] for r in runners)
        assert first.shape == second.shape == (40,) and not np.array_equal(first, second)
        saved = algo.env_runner.get_state()
        algo.train()  # the generators move on
        assert not np.array_equal(algo.env_runner.get_state()["remote_runners"][0]["generators"]["default_policy"]
                                  ["generator"], first)
        algo.env_runner.set_state(saved)
        back = algo.env_runner.get_state()["remote_runners"]
        for before, after in zip(saved["remote_runners"], back, strict=True):
            assert np.array_equal(before["generators"]["default_policy"]["generator"],
                                  after["generators"]["default_policy"]["generator"])
    finally:
        algo.stop()
