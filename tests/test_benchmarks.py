"""The benchmarks run (tiny sizes) so they cannot rot; their numbers live in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("args", [
    ["digest_speed.py", "--size-mb", "1", "--repeat", "1"],
    ["checkpoint_io.py", "--size-mb", "1", "--repeat", "1"],
    ["ppo_iteration_speed.py", "--smoke"],
    ["ppo_update_speed.py", "--epochs", "1", "--repeat", "1", "--samples", "512"],
    ["fault_injection.py", "--kills", "2", "--damages", "5", "--formats", "pickle", "msgpack"],
    ["algo_checkpoints.py", "--smoke"],
    ["ppo_learning.py", "--smoke", "--quiet"],
    ["dqn_learning.py", "--smoke", "--quiet"],
    ["dqn_learning.py", "--speed", "1", "--smoke"],
    ["sac_learning.py", "--smoke", "--quiet"],
    ["replay_buffer_io.py", "--smoke"],
    ["export_cold_start.py", "--smoke"],
    ["serve_cold_start.py", "--smoke"],
], ids=lambda a: a[0])
def test_benchmark_smoke(args, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "|" in proc.stdout  # printed its table
