"""Cold start of serving with ``amber.serve``: a fresh process that loads a policy and acts once.

A CartPole-v1 PPO policy (``--hiddens``, default RLlib's [256, 256]; seeded,
untrained) is saved as an algorithm checkpoint and as a policy checkpoint
(msgpack), and exported to ONNX (when the ``onnx`` extra is installed).
Then each case runs in a fresh ``python -c`` process, timed from outside
around the whole process (start to exit), its peak RSS being the child's own
``VmHWM`` (see ``PEAK_FOOTER`` in ``algo_checkpoints.py``)::

    from amber.serve import load_policy
    p = load_policy(path)
    p.compute_single_action(obs)

Beside them, as floors: ``python -c pass`` and ``python -c "import numpy"``
(numpy is the one dependency serving cannot avoid); and, without
``--smoke``, amber's torch path (``Policy.from_checkpoint`` and one action)
for comparison. Every serving process checks that it imported none of torch,
tensorflow, gymnasium and cloudpickle, and its action is checked against the
torch policy's ``compute_single_action(obs, explore=False)``; a mismatch
exits 2. Target (issue "serving without torch"): cold start <= 0.3 s and
<= 80 MiB for the policy checkpoint (``--check`` exits 1 when missed).

Run::

    python benchmarks/serve_cold_start.py                 # 7 runs each after 1 warm-up
    python benchmarks/serve_cold_start.py --smoke         # CI: [16, 16], 1 run, no warm-up
    python benchmarks/serve_cold_start.py --check --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from algo_checkpoints import run_child
from checkpoint_io import load_average
from export_cold_start import machine, print_case_rows

MIB = 1 << 20
OBS = [0.01, -0.02, 0.03, 0.04]
TARGET_S, TARGET_MIB = 0.3, 80.0
#: The case the target is about.
TARGET_CASE = "amber.serve: load_policy(policy checkpoint), 1 action"

SERVE = """
import json, sys, time
t0 = time.perf_counter()
from amber.serve import load_policy
t1 = time.perf_counter()
policy = load_policy({path!r})
t2 = time.perf_counter()
action = policy.compute_single_action({obs!r})[0]
t3 = time.perf_counter()
heavy = ("torch", "tensorflow", "gymnasium", "cloudpickle")
forbidden = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
print(json.dumps({{"action": int(action), "import_s": t1 - t0, "load_s": t2 - t1, "action_s": t3 - t2,
                  "forbidden": forbidden}}))
"""
TORCH = """
import json, time
t0 = time.perf_counter()
import numpy as np
from amber.policy.policy import Policy
t1 = time.perf_counter()
policy = Policy.from_checkpoint({path!r})
t2 = time.perf_counter()
action = policy.compute_single_action(np.array({obs!r}, dtype=np.float32), explore=False)[0]
t3 = time.perf_counter()
print(json.dumps({{"action": int(action), "import_s": t1 - t0, "load_s": t2 - t1, "action_s": t3 - t2,
                  "forbidden": []}}))
"""


def make_policy(hiddens: list[int], out: Path, onnx: bool) -> tuple[dict[str, Path], int]:
    """The checkpoints (and export) of a seeded CartPole PPO, and its greedy action on OBS."""
    from amber.algorithms.ppo import PPOConfig

    algo = (PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": hiddens})
            .debugging(seed=0).build())
    policy = algo.get_policy()
    paths = {"algorithm": Path(algo.save(out / "algo", format="msgpack").checkpoint.path),
             "policy": Path(policy.export_checkpoint(out / "policy", format="msgpack"))}
    if onnx:
        policy.export_model(out / "export", onnx=17)
        paths["onnx"] = out / "export"
    action = int(policy.compute_single_action(np.array(OBS, np.float32), explore=False)[0])
    algo.stop()
    return paths, action


def cases(paths: dict[str, Path], smoke: bool) -> dict[str, str]:
    """Each case's ``python -c`` code."""
    codes = {"python -c pass": "pass", 'python -c "import numpy"': "import numpy"}
    codes[TARGET_CASE] = SERVE.format(path=str(paths["policy"]), obs=OBS)
    codes["amber.serve: load_policy(algorithm checkpoint), 1 action"] = SERVE.format(
        path=str(paths["algorithm"]), obs=OBS)
    if "onnx" in paths:
        codes["amber.serve: load_policy(ONNX export), 1 action"] = SERVE.format(
            path=str(paths["onnx"]), obs=OBS)
    if not smoke:
        codes["torch: Policy.from_checkpoint(policy checkpoint), 1 action"] = TORCH.format(
            path=str(paths["policy"]), obs=OBS)
    return codes


def run_all(codes: dict[str, str], want: int, cwd: Path, repeat: int, warmup: int
            ) -> dict[str, list[dict[str, Any]]]:
    """Every case ``warmup + repeat`` times, in turn; checks each serving process's action and imports.

    :raises SystemExit: (2) a wrong action or a forbidden import.
    """
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in codes}
    for r in range(-warmup, repeat):
        for name, code in codes.items():
            res = run_child(code, cwd)
            inside = res.get("inside")
            if inside is not None:
                if inside["action"] != want:
                    sys.exit(f"{name}: action {inside['action']}, the torch policy's is {want}")
                if inside["forbidden"]:
                    sys.exit(f"{name}: imported {', '.join(inside['forbidden'][:5])}")
            if r >= 0:
                runs[name].append(res)
    return runs


def report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    """Print the table; return the results."""
    info = machine()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    print(f"## Serving: cold start (CartPole-v1 PPO, fcnet_hiddens {args.hiddens}; {args.repeat} runs "
          f"each after {args.warmup} warm-up)\n")
    print("| process: imports, loads, 1 action | wall median (s) | wall best (s) | peak RSS median (MiB) "
          "| inside: import / load / action (s) |")
    print("| --- | ---: | ---: | ---: | --- |")
    result: dict[str, Any] = {"hiddens": args.hiddens, "machine": info, "cases": {}}
    result["cases"].update(print_case_rows(runs))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="[16, 16], 1 run, no warm-up, no torch case")
    ap.add_argument("--check", action="store_true", help=f"exit 1 unless {TARGET_CASE} meets the target")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.hiddens, args.repeat, args.warmup = [16, 16], 1, 0

    started = time.perf_counter()
    onnx = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    with tempfile.TemporaryDirectory(prefix="amber-serve-bench-") as tmp:
        paths, want = make_policy(args.hiddens, Path(tmp), onnx)
        runs = run_all(cases(paths, args.smoke), want, Path(tmp), args.repeat, args.warmup)
    result = report(runs, args)
    if not onnx:
        print("| amber.serve: load_policy(ONNX export), 1 action | onnx extra not installed | | | |")
    target = result["cases"][TARGET_CASE]
    met = target["wall_median_s"] <= TARGET_S and target["peak_rss_median_mib"] <= TARGET_MIB
    print(f"\nTarget (<= {TARGET_S} s, <= {TARGET_MIB:.0f} MiB for the policy checkpoint): "
          f"{'met' if met else 'missed'}.")
    print(f"Total wall time {time.perf_counter() - started:.1f} s; load average at the end {load_average()}.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
