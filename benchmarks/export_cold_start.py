"""Cold start of serving one action from each export of a policy, in a fresh process per runtime.

A CartPole-v1 PPO policy (``--hiddens``, default RLlib's [256, 256]; seeded,
untrained) is exported every way: ``model.onnx`` (opset 17), ``model.pt2``,
``saved_model/`` and ``model.keras``, and saved as an amber policy
checkpoint (msgpack). Then, for each, a fresh ``python -c`` process imports
its runtime only, loads the model, and computes one greedy action for one
CartPole observation: the wall time is measured from outside around the whole
process (start to exit), and the peak RSS is the child's own ``VmHWM``
(see ``PEAK_FOOTER`` in ``algo_checkpoints.py``: ``getrusage``'s children
``ru_maxrss`` would count the parent's pages shared before the exec). Beside
them: a bare ``python -c pass`` (the floor) and amber's own
``Policy.from_checkpoint`` + ``compute_single_action``. RLlib's figure,
6.6 s and 831 MiB (``RLModule.from_checkpoint`` and one action, reported by
the issue), is printed as cited, not measured here.

Every process's action is checked against the policy's
``compute_single_action(obs, explore=False)``; a mismatch exits 2. Runtimes
that are not installed are reported and skipped.

Run::

    python benchmarks/export_cold_start.py                 # 5 runs each after 1 warm-up
    python benchmarks/export_cold_start.py --smoke         # CI: [64, 64], 1 run, no warm-up
    python benchmarks/export_cold_start.py --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from algo_checkpoints import run_child
from checkpoint_io import load_average

RLLIB_COLD_START_S = 6.6  # RLModule.from_checkpoint + one action, reported by the issue
RLLIB_COLD_START_MIB = 831.0
MIB = 1 << 20
OBS = [0.01, -0.02, 0.03, 0.04]

_PRELUDE = "import time\nt0 = time.perf_counter()\n"
_REPORT = """
import json, sys
print(json.dumps({"action": int(action), "import_s": t1 - t0, "load_s": t2 - t1, "action_s": t3 - t2,
                  "amber_imported": "amber" in sys.modules}))
"""

CHILDREN: dict[str, tuple[str | None, str]] = {
    "onnxruntime: InferenceSession(model.onnx), 1 action": ("onnxruntime", """
import numpy as np
import onnxruntime as ort
t1 = time.perf_counter()
sess = ort.InferenceSession({onnx!r}, providers=["CPUExecutionProvider"])
t2 = time.perf_counter()
out = sess.run(["action_dist_inputs"], {{"obs": np.array([{obs!r}], dtype=np.float32)}})[0]
action = int(out.argmax(-1)[0])
t3 = time.perf_counter()
"""),
    "torch: torch.export.load(model.pt2), 1 action": ("torch", """
import torch
t1 = time.perf_counter()
model = torch.export.load({pt2!r}).module()
t2 = time.perf_counter()
with torch.inference_mode():
    out = model(torch.tensor([{obs!r}], dtype=torch.float32))["action_dist_inputs"]
action = int(out.argmax(-1)[0])
t3 = time.perf_counter()
"""),
    "tensorflow: tf.saved_model.load(saved_model/), 1 action": ("tensorflow", """
import tensorflow as tf
t1 = time.perf_counter()
serve = tf.saved_model.load({saved_model!r}).signatures["serving_default"]
t2 = time.perf_counter()
out = serve(obs=tf.constant([{obs!r}], dtype=tf.float32))["action_dist_inputs"]
action = int(tf.argmax(out, axis=-1)[0])
t3 = time.perf_counter()
"""),
    "keras: keras.saving.load_model(model.keras), 1 action": ("keras", """
import keras
import numpy as np
t1 = time.perf_counter()
model = keras.saving.load_model({keras!r})
t2 = time.perf_counter()
out = np.asarray(model(np.array([{obs!r}], dtype=np.float32))["action_dist_inputs"])
action = int(out.argmax(-1)[0])
t3 = time.perf_counter()
"""),
    "amber: Policy.from_checkpoint (msgpack), 1 action": ("amber", """
import numpy as np
from amber.policy.policy import Policy
t1 = time.perf_counter()
policy = Policy.from_checkpoint({checkpoint!r})
t2 = time.perf_counter()
action = policy.compute_single_action(np.array({obs!r}, dtype=np.float32), explore=False)[0]
t3 = time.perf_counter()
"""),
}


def installed(module: str | None) -> bool:
    if module == "onnxruntime":
        return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
    if module in ("tensorflow", "keras"):
        return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "keras"))
    return module is None or importlib.util.find_spec(module) is not None


def export_all(hiddens: list[int], bench: Path, wanted: set[str]) -> tuple[dict[str, str], int, dict]:
    """The policy's exports and checkpoint; its greedy action on OBS; sizes."""
    from amber.algorithms.ppo import PPOConfig

    algo = (PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": hiddens})
            .debugging(seed=0).build())
    policy = algo.get_policy()
    out = bench / "export"
    times = {}
    t = time.perf_counter()
    policy.export_model(out)
    times["torch"] = time.perf_counter() - t
    if "onnxruntime" in wanted:
        t = time.perf_counter()
        policy.export_model(out, onnx=17)
        times["onnx"] = time.perf_counter() - t
    if "tensorflow" in wanted or "keras" in wanted:
        t = time.perf_counter()
        policy.export_model(out, format="keras")
        times["keras"] = time.perf_counter() - t
    checkpoint = policy.export_checkpoint(bench / "policy_ckpt", format="msgpack")
    action = int(policy.compute_single_action(np.array(OBS, np.float32), explore=False)[0])
    params = sum(int(np.prod(v.shape)) for v in policy.get_weights().values())
    algo.stop()
    paths = {"onnx": str(out / "model.onnx"), "pt2": str(out / "model.pt2"),
             "saved_model": str(out / "saved_model"), "keras": str(out / "model.keras"),
             "checkpoint": str(checkpoint)}
    sizes = {name: sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file()) if Path(p).is_dir()
             else Path(p).stat().st_size for name, p in paths.items() if Path(p).exists()}
    return paths, action, {"params": params, "export_s": times, "bytes": sizes}


def print_case_rows(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Print one table row per case of child runs (wall median and best, peak RSS median, the
    child's own import / load / action medians); return the same figures by case."""
    cases: dict[str, dict[str, Any]] = {}
    for name, rs in runs.items():
        walls = [x["wall_s"] for x in rs]
        rss = statistics.median(x["peak_rss_bytes"] for x in rs) / MIB
        inside = [x["inside"] for x in rs if "inside" in x]
        parts = " / ".join(f"{statistics.median(i[k] for i in inside):.3f}"
                           for k in ("import_s", "load_s", "action_s")) if inside else ""
        print(f"| {name} | {statistics.median(walls):.3f} | {min(walls):.3f} | {rss:.0f} | {parts} |")
        cases[name] = {"wall_median_s": statistics.median(walls), "wall_best_s": min(walls),
                                 "peak_rss_median_mib": rss, "runs": rs}
    return cases


def machine() -> dict[str, Any]:
    """CPU, cores and the versions of Python and each runtime."""
    import importlib.metadata
    import platform

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    for dist in ("numpy", "torch", "onnx", "onnxruntime", "tensorflow-cpu", "tensorflow", "keras"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hiddens", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="[64, 64], 1 run, no warm-up")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.hiddens, args.repeat, args.warmup = [64, 64], 1, 0

    started = time.perf_counter()
    os.environ.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")  # the children inherit it
    cases = {name: module for name, (module, _) in CHILDREN.items()}
    missing = sorted({name for name, module in cases.items() if not installed(module)})
    wanted = {m for n, m in cases.items() if n not in missing and m}
    with tempfile.TemporaryDirectory(prefix="amber-export-bench-") as tmp:
        bench = Path(tmp)
        paths, want, facts = export_all(args.hiddens, bench, wanted)
        codes = {"python -c pass": "pass"}
        for name, (_, body) in CHILDREN.items():
            if name not in missing:
                codes[name] = _PRELUDE + body.format(obs=OBS, **paths) + _REPORT
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in codes}
        for r in range(-args.warmup, args.repeat):
            for name, code in codes.items():
                res = run_child(code, bench)
                inside = res.get("inside")
                if inside is not None:
                    if inside["action"] != want:
                        print(f"{name}: action {inside['action']}, the policy's is {want}", file=sys.stderr)
                        return 2
                    if inside["amber_imported"] and not name.startswith("amber"):
                        print(f"{name}: imported amber", file=sys.stderr)
                        return 2
                if r >= 0:
                    runs[name].append(res)

    info = machine()
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
    print(f"## Export: cold start (CartPole-v1 PPO, fcnet_hiddens {args.hiddens}, {facts['params']:,} "
          f"parameters; {args.repeat} runs each after {args.warmup} warm-up)\n")
    print("Exported in: " + ", ".join(f"{k} {v:.2f} s" for k, v in facts["export_s"].items())
          + "; on disk: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in facts["bytes"].items()) + "\n")
    print("| process: imports, loads, 1 action | wall median (s) | wall best (s) | peak RSS median (MiB) "
          "| inside: import / load / action (s) |")
    print("| --- | ---: | ---: | ---: | --- |")
    result: dict[str, Any] = {"hiddens": args.hiddens, "facts": facts, "machine": info, "cases": {}}
    result["cases"].update(print_case_rows(runs))
    for name in missing:
        print(f"| {name} | not installed | | | |")
    print(f"| RLlib: RLModule.from_checkpoint, 1 action: cited from the issue, not measured here "
          f"| {RLLIB_COLD_START_S} | | {RLLIB_COLD_START_MIB:.0f} | |")
    total = time.perf_counter() - started
    print(f"\nTotal wall time {total:.1f} s; load average at the end {load_average()}.")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
