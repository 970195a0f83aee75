"""``amber train`` and ``amber evaluate`` from the command line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

from amber.checkpoint import read_checkpoint


def _amber(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**os.environ, **(env or {})})


def test_train_writes_checkpoints_and_progress_then_evaluate(tmp_path):
    out = tmp_path / "run"
    proc = _amber("train", "--algo", "PPO", "--env", "CartPole-v1", "--stop-iters", "2",
                  "--checkpoint-dir", str(out), "--checkpoint-every", "1", "--format", "msgpack",
                  "--seed", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    final = proc.stdout.strip().splitlines()[-1]
    assert final == str(out / "checkpoint_000002")
    rows = list(csv.DictReader(open(out / "progress.csv")))
    assert [r["training_iteration"] for r in rows] == ["1", "2"]
    assert rows[0]["checkpoint"].endswith("checkpoint_000001")
    assert float(rows[1]["episode_return_mean"]) > float(rows[0]["episode_return_mean"])  # it learns
    assert read_checkpoint(final, allow_pickle=False).state["components"]["progress"]["iteration"] == 2
    ev = _amber("evaluate", final, "--episodes", "2", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert "return mean" in ev.stdout


def test_train_needs_a_stop_condition_and_a_known_algorithm(tmp_path):
    proc = _amber("train", "--env", "CartPole-v1", cwd=tmp_path)
    assert proc.returncode == 2 and "stop" in proc.stderr and "Traceback" not in proc.stderr
    proc = _amber("train", "--algo", "A3C", "--env", "CartPole-v1", "--stop-iters", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "PPO" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_a_multi_agent_checkpoint_whose_agents_end_at_different_steps(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from amber.algorithms.ppo import PPOConfig
    from amber.cli import cli
    from amber.envs import MultiAgentCartPole

    config = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]})
              .multi_agent(policies={"pol0", "pol1"}, policy_mapping_fn=_two_policies)
              .debugging(seed=0))  # pickle: it stores the mapping function
    algo = config.build()
    algo.save(tmp_path / "ck")
    lengths = []  # each agent's game played alone, greedily, from the seed evaluate gives it
    for ep in range(3):
        env = MultiAgentCartPole({"num_agents": 2})
        per_agent = []
        for agent in range(2):
            obs, _ = env.envs[agent].reset(seed=ep + agent)
            steps, done = 0, False
            while not done:
                action = algo.get_policy(f"pol{agent}").compute_single_action(obs, explore=False)[0]
                obs, _, term, trunc, _ = env.envs[agent].step(action)
                steps, done = steps + 1, term or trunc
            per_agent.append(steps)
        lengths.append(per_agent)
    algo.stop()
    assert any(a != b for a, b in lengths), "the agents' games should end at different steps"
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "ck"), "--episodes", "3"])
    assert result.exit_code == 0, result.output
    assert f"return mean: {np.mean([sum(x) for x in lengths]):.2f}" in result.output


def _two_policies(agent_id, episode, worker, **kw):
    return f"pol{agent_id}"


def test_evaluate_of_a_checkpoint_without_its_mapping_says_to_give_a_policy(tmp_path):
    """RLlib's multi-agent checkpoint records no mapping function: evaluate names the option that
    helps (not the Python keyword the CLI has no way to pass), and --policy plays every agent."""
    from pathlib import Path

    from click.testing import CliRunner

    from amber.cli import cli

    ma = str(Path(__file__).parent / "fixtures" / "rllib-2.10" / "ma_msgpack")
    result = CliRunner().invoke(cli, ["evaluate", ma, "--episodes", "1"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "saved without its policy_mapping_fn" in result.stderr and "give --policy ID" in result.stderr
    result = CliRunner().invoke(cli, ["evaluate", ma, "--episodes", "1", "--policy", "pol0"])
    assert result.exit_code == 0 and "return mean" in result.output, result.output
    for bad in (["--episodes", "0"], ["--seed", "-5"]):
        result = CliRunner().invoke(cli, ["evaluate", ma, *bad])
        assert result.exit_code == 2 and "is not in the range" in result.output
