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
