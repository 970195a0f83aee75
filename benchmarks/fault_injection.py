"""Fault injection: kill -9 savers at random instants, damage files, and count survivals.

For each format: ``--kills`` trials each start a process that saves an
Algorithm checkpoint over the same path in a loop and SIGKILL it after a
random delay, then load whatever the path holds; ``--damages`` trials each
truncate, flip, zero-fill or delete one random file of a good checkpoint and
check that loading raises CorruptCheckpointError naming that file. Prints a
markdown table; exits 1 if any trial failed.

Run: python benchmarks/fault_injection.py --kills 200 --damages 300
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import CorruptCheckpointError
from amber.registry import get_registry

SAVER = """
import sys, numpy as np
from amber.checkpoint import write_checkpoint
fmt, path = sys.argv[1], sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    i += 1
    w = np.full(200_000, i, dtype=np.float32)
    write_checkpoint(path, type="Algorithm", state={"i": i}, format=fmt,
                     policies={"a": {"w": w}, "b": {"w": w[:1000].copy(), "i": i}})
"""


def kill_trials(fmt: str, n: int, rng: random.Random, work: Path) -> dict[str, int]:
    """Kill a looping saver ``n`` times; count what the path held each time."""
    path = work / "ck"
    counts = {"trials": 0, "committed": 0, "empty": 0, "failed": 0}
    for _ in range(n):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER, fmt, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts["trials"] += 1
        if not path.exists():
            counts["empty"] += 1
            continue
        try:
            ckpt = read_checkpoint(path, allow_pickle=True)
            i = ckpt.state["i"]
            ok = ckpt.policies["b"].state["i"] == i and bool((ckpt.policies["a"].state["w"] == i).all())
        except Exception:
            ok = False
        counts["committed" if ok else "failed"] += 1
    write_checkpoint(work / "after", type="State", state={}, format=fmt)  # cleans up stale temporaries
    counts["leftovers"] = len([p for p in work.iterdir() if p.name not in ("ck", "after")])
    return counts


def damage_trials(fmt: str, n: int, rng: random.Random, work: Path) -> dict[str, int]:
    """Damage one random file ``n`` times; count the loads that named it."""
    import numpy as np

    good = write_checkpoint(
        work / "good",
        type="Algorithm",
        state={"i": 1},
        format=fmt,
        policies={"a": {"w": np.arange(100_000, dtype=np.float32)}, "b": {"x": 1}},
    )
    files = sorted(p.relative_to(good) for p in good.rglob("*") if p.is_file())
    counts = {"trials": 0, "named": 0, "failed": 0}
    for _ in range(n):
        victim_rel = rng.choice(files)
        trial = work / "trial"
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(good, trial)
        victim = trial / victim_rel
        data = victim.read_bytes()
        kind = rng.choice(["truncate", "flip", "zero", "delete"])
        if kind == "truncate":
            victim.write_bytes(data[: rng.randrange(len(data))])
        elif kind == "flip":
            i = rng.randrange(len(data))
            victim.write_bytes(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :])
        elif kind == "zero":
            victim.write_bytes(bytes(len(data)))
        else:
            victim.unlink()
        counts["trials"] += 1
        try:
            read_checkpoint(trial, allow_pickle=True)
            counts["failed"] += 1
        except CorruptCheckpointError as e:
            named = str(victim) in str(e) or str(victim.parent / "checkpoint.json") in str(e)
            counts["named" if named else "failed"] += 1
        except Exception:
            counts["failed"] += 1
    return counts


def main() -> int:
    """Run the trials and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="kill -9 trials per format")
    parser.add_argument("--damages", type=int, default=100, help="file-damage trials per format")
    parser.add_argument("--formats", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    formats = args.formats or get_registry().names()
    rng = random.Random(args.seed)
    failed = 0
    print(
        "| format | kill -9 trials | path loaded whole and consistent | path empty (killed before "
        "the first commit) | failed loads | stale temporaries left | damage trials | "
        "CorruptCheckpointError naming the file | other outcome |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for fmt in formats:
        with tempfile.TemporaryDirectory(dir=os.environ.get("AMBER_BENCH_DIR")) as tmp:
            k = kill_trials(fmt, args.kills, rng, Path(tmp) / "k") if args.kills else {}
            d = damage_trials(fmt, args.damages, rng, Path(tmp)) if args.damages else {}
        failed += k.get("failed", 0) + k.get("leftovers", 0) + d.get("failed", 0)
        print(
            f"| {fmt} | {k.get('trials', 0)} | {k.get('committed', 0)} | {k.get('empty', 0)} | "
            f"{k.get('failed', 0)} | {k.get('leftovers', 0)} | {d.get('trials', 0)} | "
            f"{d.get('named', 0)} | {d.get('failed', 0)} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
