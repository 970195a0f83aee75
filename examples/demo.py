"""amber's demo: save a checkpoint, inspect it, convert it, verify it, load it safely.

Run: python examples/demo.py [DIR]   (default: a fresh temporary directory)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.utils.checkpoints import convert_to_msgpack_checkpoint, verify


def main() -> None:
    """Walk through the life of a checkpoint, printing what amber sees."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="amber-demo-"))
    rng = np.random.default_rng(0)
    policies = {
        pid: {"weights": {"fc1": rng.standard_normal((4, 256)).astype(np.float32),
                          "fc2": rng.standard_normal((256, 2)).astype(np.float32)},
              "optimizer": {"step": 120, "lr": 3e-4}}
        for pid in ("pol1", "pol2")
    }
    pickled = write_checkpoint(root / "pickle_ckpt", type="Algorithm", format="pickle",
                               state={"iteration": 10, "env_steps": 40_000}, policies=policies)
    print(f"saved (pickle): {pickled}")
    amber = [sys.executable, "-m", "amber.cli"]
    subprocess.run([*amber, "inspect", str(pickled)], check=True)
    portable = convert_to_msgpack_checkpoint(pickled, root / "msgpack_ckpt")
    print(f"converted (msgpack): {portable}")
    subprocess.run([*amber, "verify", str(portable)], check=True)
    report = verify(portable)
    assert report.ok, report.problems
    ckpt = read_checkpoint(portable, policy_ids=["pol2"], allow_pickle=False)
    w = ckpt.policies["pol2"].state["weights"]["fc2"]
    assert np.array_equal(w, policies["pol2"]["weights"]["fc2"])
    print(f"safe load of pol2 alone: fc2 {w.shape} {w.dtype}, identical to what was saved")


if __name__ == "__main__":
    main()
