"""Algorithm and policy checkpoints end to end: durable save, from_checkpoint, subset restore, cold start.

What it measures, in one run:

a. *A big PPO* (issue "algorithm checkpoints"): PPO on CartPole-v1 with
   ``model={"fcnet_hiddens": --size-model}`` (default [2048, 2048, 2048]:
   separate policy and value MLPs, 16.8 M parameters: 67 MB of float32
   weights and twice that of Adam moments, 202 MB in all), after one short ``train()`` (256 env steps,
   minibatch 128, 1 epoch) so that the optimizer state exists. For each
   format (``--formats``, default pickle and msgpack): the durable
   ``algo.save(dir, format=F)`` against the raw baseline: the same bytes (every
   array of the policy's weights and optimizer state) written to one new file,
   then the file and its directory fsynced, exactly as
   ``benchmarks/checkpoint_io.py`` does (64-byte-aligned reads, settling
   before each timed operation); then ``Algorithm.from_checkpoint(dir)`` and
   ``Policy.from_checkpoint(dir/policies/default_policy)``. For information:
   ``read_checkpoint`` alone (the engine's verified read and decode),
   ``algo.get_state()`` and ``config.build()`` of the same config without a
   checkpoint, which show where a from_checkpoint's time goes. Then the
   background save: how long ``algo.save(dir, format=F, block=False)``
   blocks the caller (the snapshot: ``get_state()`` and the copies it
   needs), against the synchronous save, and the time until its
   ``result()``; its state files are checked byte for byte against the
   synchronous save's. The weights and optimizer moments are copied in the
   save's writer thread, and an update of them waits for that copy; so, for
   scale, the worst case too: ``save(block=False)`` followed at once by what
   an update does first, ``wait_for_snapshot()`` (training does not update
   the moment a save returns: PPO samples first).
b. *Subset restore*: a multi-agent PPO on MultiAgentCartPole (2 agents) with
   ``--policies`` policies p0..p{N-1} (model [64, 64], agent i → f"p{i}"),
   untrained, saved once; ``Algorithm.from_checkpoint(path)`` (all N) against
   ``Algorithm.from_checkpoint(path, policy_ids=["p0", "p1"],
   policy_mapping_fn=...)``, and ``Policy.from_checkpoint`` likewise. For information:
   the algorithm's fixed cost (``policy_ids=[]``) and its subset restore right after an untimed
   subset restore of two other policies (the collection before each timed operation walks the
   whole heap, leaving the CPU caches cold: this shows how much of a few milliseconds that is).
c. *Cold start serving*: a fresh ``python -c`` process that imports amber,
   runs ``Policy.from_checkpoint`` on a CartPole PPO policy checkpoint
   (default model [256, 256]) and computes one action: wall time, measured
   from outside around the whole process, and the child's peak RSS (its
   ``VmHWM``, printed by the child as it ends; see :data:`PEAK_FOOTER` for
   why not ``ru_maxrss``). Beside it, as floors, a bare ``python -c pass``
   and ``python -c "import torch"``. Smoke runs time the first format only,
   without the torch floor.

Targets (issue "algorithm checkpoints"): save <= 1.5x raw write+fsync;
``save(block=False)`` blocks the caller <= 0.10x the synchronous save;
``Algorithm.from_checkpoint`` of the big PPO <= 0.5x RLlib's, which the
issue's author measured at 0.48-0.68 s for the same model, so <= 0.24 s;
subset restore of 2 of 100 policies <= 5 % of restoring all. RLlib's figures
(also its cold start: 6.6 s and 831 MiB) are printed as reported by the
issue, not measured here, unless ray is installed, in which case this
script measures RLlib too (best effort; a failure is reported, not fatal).

The raw-disk helpers (write+fsync, aligned read, settling) are imported from
``checkpoint_io.py`` beside this script. On a loaded machine torch's small
parallel ops slow down a lot; ``--threads 1`` steadies them. Run::

    python benchmarks/algo_checkpoints.py                      # full size, 3 runs
    python benchmarks/algo_checkpoints.py --smoke              # CI: [64, 64], 10 policies, 1 run
    python benchmarks/algo_checkpoints.py --check --json a.json

Exit status: 0; 1 with ``--check`` when a target is missed; 2 when
something fails or restores something else than was saved.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from checkpoint_io import MB, load_average, machine_info, mem_available, prefault, raw_read, raw_write

SAVE_TARGET = 1.5
ASYNC_BLOCK_TARGET = 0.10
#: Peak memory above what a save or a restore starts with and keeps, over the state's bytes.
MEMORY_TARGET = 0.25
RLLIB_FROM_CHECKPOINT_S = (0.48, 0.68)  # reported by the author, same model
FROM_CHECKPOINT_TARGET_S = 0.5 * RLLIB_FROM_CHECKPOINT_S[0]
#: Issue 12 item 3 as first written: restoring 2 of 100 policies / restoring all 100. Reported,
#: not judged: it moves with how cheap one policy is to build, not with what a subset restore
#: reads (docs/benchmarks.md, "Issue 12 item 3, restated"), so it is judged by the two below.
SUBSET_TARGET = 0.05
#: The part of a restore that depends on its policies, 2 of 100 / all 100 (fixed cost taken off both).
SUBSET_POLICY_PART_TARGET = 0.05
#: Restoring 2 of 100 / restoring the same 2 from a checkpoint that holds only them.
SUBSET_VS_ALONE_TARGET = 1.2
RLLIB_COLD_START_S = 6.6  # reported by the issue
RLLIB_COLD_START_MIB = 831.0
MIB = 1 << 20

__all__ = ["agent_to_policy", "main"]

def agent_to_policy(agent_id: Any, episode: Any = None, worker: Any = None, **kw: Any) -> str:
    """MultiAgentCartPole's agent i → policy f"p{i}"."""
    return f"p{agent_id}"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def arrays_of(tree: Any) -> list[np.ndarray]:
    """Every numpy array in a state tree, flattened and contiguous."""
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in arrays_of(v)]
    if isinstance(tree, (list, tuple)):
        return [a for v in tree for a in arrays_of(v)]
    if isinstance(tree, np.ndarray):
        return [np.ascontiguousarray(tree).reshape(-1)]
    return []


def summary(times: list[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "best_s": min(times), "runs_s": times}


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _rss_hwm() -> tuple[int, int]:
    """This process's resident set and its high-water mark, in bytes (Linux; zeros elsewhere)."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(None, 1)[0]
                if key in values:
                    values[key] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return values["VmRSS:"], values["VmHWM:"]


def _reset_peak() -> int | None:
    """Reset the high-water mark to the current resident set (``clear_refs`` 5); the resident
    set, or None where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _rss_hwm()[0]


class Timer:
    """Times operations, settling memory first (see checkpoint_io.prefault), and measures how much
    the resident set peaked above what it was before and what it kept after (``last_memory``)."""

    def __init__(self, settle_bytes: int) -> None:
        self.settle_bytes = settle_bytes
        self.settle_s: list[float] = []
        self.last_memory: tuple[int, int] | None = None

    def __call__(self, fn: Any, *a: Any, **kw: Any) -> tuple[float, Any]:
        gc.collect()
        if self.settle_bytes > 0:
            self.settle_s.append(prefault(self.settle_bytes))
        before = _reset_peak()
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        elapsed = time.perf_counter() - t0
        if before is not None:
            rss, hwm = _rss_hwm()
            self.last_memory = (hwm - before, rss - before)
        return elapsed, out

    def extra_peak(self) -> int | None:
        """Bytes the last operation's peak rose above both its start and what it kept."""
        if self.last_memory is None:
            return None
        peak, kept = self.last_memory
        return max(0, peak - max(kept, 0))


def stop(algo: Any) -> None:
    if algo is not None and hasattr(algo, "stop"):
        algo.stop()


# --------------------------------------------------------------------------
# a. the big PPO
# --------------------------------------------------------------------------


def big_config(hiddens: list[int]) -> Any:
    from amber.algorithms.ppo import PPOConfig

    return (
        PPOConfig()
        .environment("CartPole-v1")
        .training(model={"fcnet_hiddens": list(hiddens)}, train_batch_size=256, minibatch_size=128,
                  num_epochs=1)
        .debugging(seed=0)
    )


def part_a(args: argparse.Namespace, bench: Path, errors: dict[str, str]) -> dict[str, Any]:
    from amber.algorithms.algorithm import Algorithm
    from amber.checkpoint import read_checkpoint
    from amber.policy.policy import Policy

    config = big_config(args.size_model)
    t0 = time.perf_counter()
    algo = config.build()
    build_first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    algo.train()
    train_s = time.perf_counter() - t0
    policy = algo.get_policy()
    pstate = policy.get_state()
    weights = pstate["weights"]
    arrays = arrays_of(pstate["weights"]) + arrays_of(pstate["optimizer"])
    del pstate
    array_bytes = sum(a.nbytes for a in arrays)
    if args.settle_mb is None:  # the state's arrays as numpy, as torch tensors twice (restored), a buffer
        settle = 2 * array_bytes + 16 * MB
    else:
        settle = int(args.settle_mb * MB)
    timer = Timer(min(settle, mem_available() // 2))

    keys = ["raw_write", "raw_read_warm", "get_state", "build_fresh"]
    for fmt in args.formats:
        keys += [f"{fmt}_save", f"{fmt}_save_async_block", f"{fmt}_save_async_total",
                 f"{fmt}_save_async_update",
                 f"{fmt}_read_checkpoint", f"{fmt}_algo_from_checkpoint", f"{fmt}_policy_from_checkpoint"]
    times: dict[str, list[float]] = {k: [] for k in keys}
    memory: dict[str, list[int | None]] = {}  # extra peak bytes of each timed save and restore
    ckpt_bytes: dict[str, int] = {}

    failed: set[str] = set()
    for r in range(-args.warmup, args.repeat):
        rec = times if r >= 0 else {k: [] for k in times}
        raw = bench / f"a-raw-{r}.bin"
        t, _ = timer(raw_write, arrays, raw)
        rec["raw_write"].append(t)
        t, buf = timer(raw_read, raw)
        rec["raw_read_warm"].append(t)
        del buf
        raw.unlink()
        t, st = timer(algo.get_state)
        rec["get_state"].append(t)
        del st
        t, fresh = timer(config.build)
        rec["build_fresh"].append(t)
        stop(fresh)
        del fresh
        for fmt in args.formats:
            if fmt in failed:
                continue
            path = bench / f"a-{fmt}-{r}"
            try:
                t, _ = timer(algo.save, path, format=fmt)
                rec[f"{fmt}_save"].append(t)
                memory.setdefault(f"{fmt}_save", []).append(timer.extra_peak())
                ckpt_bytes[fmt] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                time_async_save(algo, fmt, path, rec, timer, check=r == -args.warmup)
                t, ck = timer(read_checkpoint, path)
                rec[f"{fmt}_read_checkpoint"].append(t)
                del ck
                t, restored = timer(Algorithm.from_checkpoint, path)
                rec[f"{fmt}_algo_from_checkpoint"].append(t)
                memory.setdefault(f"{fmt}_algo_from_checkpoint", []).append(timer.extra_peak())
                if r == -args.warmup and not same_weights(weights, restored.get_policy().get_weights()):
                    raise AssertionError("Algorithm.from_checkpoint restored other weights")
                stop(restored)
                del restored
                t, pol = timer(Policy.from_checkpoint, path / "policies" / "default_policy")
                rec[f"{fmt}_policy_from_checkpoint"].append(t)
                if r == -args.warmup and not same_weights(weights, pol.get_weights()):
                    raise AssertionError("Policy.from_checkpoint restored other weights")
                del pol
            except Exception as e:  # report, go on with the other formats
                errors[f"a/{fmt}"] = f"{type(e).__name__}: {e}"
                failed.add(fmt)
            finally:
                if not args.keep:
                    shutil.rmtree(path, ignore_errors=True)
    stop(algo)
    return {
        "hiddens": list(args.size_model),
        "num_params": int(policy.num_params()),
        "array_bytes": array_bytes,
        "checkpoint_bytes": ckpt_bytes,
        "first_build_s": build_first_s,
        "train_s": train_s,
        "settle_bytes": timer.settle_bytes,
        "times": {k: summary(v) for k, v in times.items() if v},
        "extra_peak_bytes": {k: statistics.median(v) for k, v in memory.items() if v and None not in v},
    }


def time_async_save(algo: Any, fmt: str, sync_path: Path, rec: dict[str, list[float]], timer: Timer,
                    check: bool) -> None:
    """``algo.save(block=False)``: the time it blocks the caller, and until its ``result()``; with
    ``check``, its state files must be those of the synchronous save at ``sync_path``."""
    from amber.async_save import wait_for_snapshot

    path = sync_path.with_name(sync_path.name + "-async")
    try:
        t, handle = timer(algo.save, path, format=fmt, block=False)
        t0 = time.perf_counter()
        handle.result()
        rec[f"{fmt}_save_async_block"].append(t)
        rec[f"{fmt}_save_async_total"].append(t + time.perf_counter() - t0)
        shutil.rmtree(path)

        def save_then_update() -> Any:
            handle = algo.save(path, format=fmt, block=False)
            wait_for_snapshot()
            return handle

        t, handle = timer(save_then_update)
        handle.result()
        rec[f"{fmt}_save_async_update"].append(t)
        if check:
            for rel in (p.relative_to(sync_path) for p in sync_path.rglob("*") if p.is_file()):
                same = (sync_path / rel).read_bytes() == (path / rel).read_bytes()
                if rel.name != "checkpoint.json" and not same:
                    raise AssertionError(f"save(block=False) wrote another {rel} than the synchronous save")
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------
# b. subset restore
# --------------------------------------------------------------------------


def _after_warm_up(restore: Any, path: Path, warm_ids: list[str], ids: list[str],
                   mapping: Any) -> tuple[float, Any]:
    """Time ``restore(path, policy_ids=ids)`` right after an untimed restore of ``warm_ids``, both
    after the collection every timed operation here starts with: that collection walks the whole
    heap and so leaves the CPU caches cold, which a short operation feels most."""
    gc.collect()
    stop(restore(path, policy_ids=warm_ids, policy_mapping_fn=mapping))
    t0 = time.perf_counter()
    out = restore(path, policy_ids=ids, policy_mapping_fn=mapping)
    return time.perf_counter() - t0, out


def part_b(args: argparse.Namespace, bench: Path, errors: dict[str, str]) -> dict[str, Any]:
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole
    from amber.policy.policy import Policy

    n = args.policies
    ids = [f"p{i}" for i in range(n)]
    subset = ids[:2]
    config = (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .training(model={"fcnet_hiddens": [64, 64]})
        .multi_agent(policies=set(ids), policy_mapping_fn=agent_to_policy)
        .debugging(seed=0)
    )
    t0 = time.perf_counter()
    algo = config.build()
    build_s = time.perf_counter() - t0
    path = bench / "b-multi"
    t0 = time.perf_counter()
    algo.save(path)
    save_s = time.perf_counter() - t0
    want = {pid: algo.get_policy(pid).get_weights() for pid in subset}
    stop(algo)
    del algo
    # the same restore from a checkpoint that holds only the subset's policies
    small = bench / "b-only-subset"
    alone = config.copy().multi_agent(policies=set(subset)).build()
    alone.save(small)
    stop(alone)
    timer = Timer(0)
    keys = ("algo_all", "algo_subset", "policy_all", "policy_subset", "algo_none", "algo_subset_warm",
            "algo_subset_alone")
    times: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for r in range(-args.warmup, args.repeat):
            rec = times if r >= 0 else {k: [] for k in times}
            t, a = timer(Algorithm.from_checkpoint, path)
            rec["algo_all"].append(t)
            if sorted(a.policies) != sorted(ids):
                raise AssertionError(f"from_checkpoint(all) built {len(a.policies)} policies, not {n}")
            stop(a)
            del a
            t, a = timer(Algorithm.from_checkpoint, path, policy_ids=subset,
                         policy_mapping_fn=agent_to_policy)
            rec["algo_subset"].append(t)
            if sorted(a.policies) != sorted(subset) or not all(
                same_weights(want[p], a.get_policy(p).get_weights()) for p in subset
            ):
                raise AssertionError(f"from_checkpoint(policy_ids={subset}) restored something else")
            stop(a)
            del a
            # the fixed cost (no policy), and (for information) the subset with the CPU caches warm
            t, a = timer(Algorithm.from_checkpoint, path, policy_ids=[], policy_mapping_fn=agent_to_policy)
            rec["algo_none"].append(t)
            stop(a)
            del a
            t, a = _after_warm_up(Algorithm.from_checkpoint, path, ids[2:4], subset, agent_to_policy)
            rec["algo_subset_warm"].append(t)
            stop(a)
            del a
            t, a = timer(Algorithm.from_checkpoint, small, policy_ids=subset,
                         policy_mapping_fn=agent_to_policy)
            rec["algo_subset_alone"].append(t)
            stop(a)
            del a
            t, ps = timer(Policy.from_checkpoint, path)
            rec["policy_all"].append(t)
            if len(ps) != n:
                raise AssertionError(f"Policy.from_checkpoint(all) gave {len(ps)} policies, not {n}")
            del ps
            t, ps = timer(Policy.from_checkpoint, path, policy_ids=subset)
            rec["policy_subset"].append(t)
            if sorted(ps) != sorted(subset):
                raise AssertionError(f"Policy.from_checkpoint(policy_ids={subset}) gave {sorted(ps)}")
            del ps
    except Exception as e:
        errors["b"] = f"{type(e).__name__}: {e}"
    ckpt_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {
        "num_policies": n,
        "subset": subset,
        "build_s": build_s,
        "save_s": save_s,
        "checkpoint_bytes": ckpt_bytes,
        "times": {k: summary(v) for k, v in times.items() if v},
    }


# --------------------------------------------------------------------------
# c. cold start
# --------------------------------------------------------------------------

AMBER_CHILD = """\
import time
t0 = time.perf_counter()
import amber
import numpy as np
from amber.policy.policy import Policy
t1 = time.perf_counter()
policy = Policy.from_checkpoint({path!r})
t2 = time.perf_counter()
action, _, _ = policy.compute_single_action(np.array([0.0, 0.1, 0.2, 0.3], dtype=np.float32))
t3 = time.perf_counter()
import json, sys
print(json.dumps({{"action": int(action), "import_s": t1 - t0, "from_checkpoint_s": t2 - t1,
                  "action_s": t3 - t2, "torch_imported": "torch" in sys.modules,
                  "dynamo_imported": "torch._dynamo" in sys.modules}}))
"""

RLLIB_CHILD = """\
import time
t0 = time.perf_counter()
import numpy as np
from ray.rllib.policy.policy import Policy
t1 = time.perf_counter()
policy = Policy.from_checkpoint({path!r})
t2 = time.perf_counter()
action, _, _ = policy.compute_single_action(np.array([0.0, 0.1, 0.2, 0.3], dtype=np.float32))
t3 = time.perf_counter()
import json
print(json.dumps({{"action": int(action), "import_s": t1 - t0, "from_checkpoint_s": t2 - t1,
                  "action_s": t3 - t2}}))
"""


# Appended to every child: its peak RSS from /proc/self/status. VmHWM belongs to the
# process's memory map, which exec replaces, so it does not include the parent's
# pages that a fork/vfork shared before the exec. getrusage's ru_maxrss (RUSAGE_SELF,
# RUSAGE_CHILDREN or wait4's, and so /usr/bin/time's) keeps the maximum over the
# whole task, the parent's pages before the exec included: here it reported the
# benchmark's own RSS for a bare "python -c pass".
PEAK_FOOTER = """
try:
    with open("/proc/self/status") as _f:
        print("__vmhwm_kib__", [_l.split()[1] for _l in _f if _l.startswith("VmHWM:")][0])
except OSError:
    pass
"""


def run_child(code: str, cwd: Path) -> dict[str, Any]:
    """Run ``python -c code``: wall time around the whole process, from outside; its peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code + PEAK_FOOTER], stdout=out, stderr=err, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"child exited {proc.returncode}:\n{stderr.strip()[-2000:]}")
    res: dict[str, Any] = {"wall_s": wall,
                           "ru_maxrss_bytes": usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)}
    res["peak_rss_bytes"] = res["ru_maxrss_bytes"]
    res["peak_rss_source"] = "ru_maxrss (includes the parent's pages before exec)"
    for line in stdout.strip().splitlines():
        if line.startswith("__vmhwm_kib__"):
            res["peak_rss_bytes"] = int(line.split()[1]) * 1024
            res["peak_rss_source"] = "VmHWM"
        elif line.startswith("{"):
            res["inside"] = json.loads(line)
    return res


def cold_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    rss = [r["peak_rss_bytes"] for r in runs]
    out = {"wall": summary(walls), "peak_rss_median_bytes": statistics.median(rss),
           "peak_rss_max_bytes": max(rss), "runs": runs}
    inside = [r["inside"] for r in runs if "inside" in r]
    for key in ("import_s", "from_checkpoint_s", "action_s"):
        vals = [i[key] for i in inside if key in i]
        if vals:
            out[f"inside_{key}_median"] = statistics.median(vals)
    return out


def part_c(args: argparse.Namespace, bench: Path, errors: dict[str, str]) -> dict[str, Any]:
    from amber.algorithms.ppo import PPOConfig

    algo = PPOConfig().environment("CartPole-v1").debugging(seed=0).build()
    policy = algo.get_policy()
    paths = {}
    for fmt in args.formats[:1] if args.smoke else args.formats:
        paths[fmt] = policy.export_checkpoint(bench / f"c-policy-{fmt}", format=fmt)
    stop(algo)
    del algo, policy
    cases: dict[str, str] = {"python -c pass": "pass"}
    if not args.smoke:
        cases['python -c "import torch"'] = "import torch"
    for fmt, p in paths.items():
        cases[f"amber: import, Policy.from_checkpoint ({fmt}), 1 action"] = AMBER_CHILD.format(path=str(p))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cases}
    for r in range(-args.warmup, args.repeat):
        for name, code in cases.items():
            try:
                res = run_child(code, bench)
            except Exception as e:
                errors[f"c/{name}"] = f"{type(e).__name__}: {e}"
                continue
            if r >= 0:
                runs[name].append(res)
    return {"cases": {k: cold_summary(v) for k, v in runs.items() if v}}


# --------------------------------------------------------------------------
# RLlib, only where ray is installed (best effort)
# --------------------------------------------------------------------------


def rllib_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def _rllib_config(hiddens: list[int] | None) -> Any:
    from ray.rllib.algorithms.ppo import PPOConfig as RPPOConfig

    cfg = RPPOConfig().environment("CartPole-v1").framework("torch")
    if hasattr(cfg, "api_stack"):
        cfg = cfg.api_stack(enable_rl_module_and_learner=False, enable_env_runner_and_connector_v2=False)
    cfg = cfg.env_runners(num_env_runners=0) if hasattr(cfg, "env_runners") else cfg.rollouts(
        num_rollout_workers=0)
    training: dict[str, Any] = {"train_batch_size": 256}
    if hiddens is not None:
        training["model"] = {"fcnet_hiddens": list(hiddens)}
    cfg = cfg.training(**training)
    for mb, ep in (("minibatch_size", "num_epochs"), ("sgd_minibatch_size", "num_sgd_iter")):
        try:
            cfg = cfg.training(**{mb: 128, ep: 1})
            break
        except Exception:  # this RLlib version names them otherwise
            continue
    return cfg


def rllib_measure(args: argparse.Namespace, bench: Path) -> dict[str, Any]:
    """RLlib's from_checkpoint of the big PPO and its cold start, measured the same way."""
    out: dict[str, Any] = {}
    try:
        from ray.rllib.algorithms.algorithm import Algorithm as RAlgorithm

        algo = _rllib_config(args.size_model).build()
        algo.train()
        res = algo.save(str(bench / "rllib-a"))
        path = getattr(getattr(res, "checkpoint", None), "path", None) or str(bench / "rllib-a")
        algo.stop()
        times = []
        for r in range(-args.warmup, args.repeat):
            gc.collect()
            t0 = time.perf_counter()
            restored = RAlgorithm.from_checkpoint(path)
            t = time.perf_counter() - t0
            restored.stop()
            if r >= 0:
                times.append(t)
        out["from_checkpoint"] = summary(times)
    except Exception as e:
        out["from_checkpoint_error"] = f"{type(e).__name__}: {e}"
    try:
        algo = _rllib_config(None).build()
        ppath = bench / "rllib-c-policy"
        algo.get_policy().export_checkpoint(str(ppath))
        algo.stop()
        runs = []
        for r in range(-args.warmup, args.repeat):
            res = run_child(RLLIB_CHILD.format(path=str(ppath)), bench)
            if r >= 0:
                runs.append(res)
        out["cold_start"] = cold_summary(runs)
    except Exception as e:
        out["cold_start_error"] = f"{type(e).__name__}: {e}"
    return out


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------


def evaluate(res: dict[str, Any], formats: list[str]) -> list[dict[str, Any]]:
    rows = []
    a = res.get("a", {}).get("times", {})
    rl = res.get("rllib", {}).get("from_checkpoint")
    fc_limit = 0.5 * rl["median_s"] if rl else FROM_CHECKPOINT_TARGET_S
    fc_src = "0.5x RLlib measured here" if rl else "0.5x RLlib's reported 0.48 s"
    for fmt in formats:
        if f"{fmt}_save" in a and "raw_write" in a:
            rows.append({"part": "a", "format": fmt, "target": "algo.save / raw write+fsync",
                         "value": a[f"{fmt}_save"]["median_s"] / a["raw_write"]["median_s"],
                         "limit": SAVE_TARGET, "unit": "x"})
        if f"{fmt}_save_async_block" in a and f"{fmt}_save" in a:
            rows.append({"part": "a", "format": fmt, "target": "save(block=False) blocks / algo.save",
                         "value": a[f"{fmt}_save_async_block"]["median_s"] / a[f"{fmt}_save"]["median_s"],
                         "limit": ASYNC_BLOCK_TARGET, "unit": "x"})
        for key, what in ((f"{fmt}_save", "algo.save"), (f"{fmt}_algo_from_checkpoint", "from_checkpoint")):
            extra = res.get("a", {}).get("extra_peak_bytes", {}).get(key)
            if extra is not None:
                rows.append({"part": "a", "format": fmt, "target": f"{what}: peak extra memory / state bytes",
                             "value": extra / res["a"]["array_bytes"], "limit": MEMORY_TARGET, "unit": "x"})
        if f"{fmt}_algo_from_checkpoint" in a and "raw_read_warm" in a and "build_fresh" in a:
            floor = a["raw_read_warm"]["median_s"] + a["build_fresh"]["median_s"]
            rows.append({"part": "a", "format": fmt,
                         "target": "Algorithm.from_checkpoint / (raw read + config.build())",
                         "value": a[f"{fmt}_algo_from_checkpoint"]["median_s"] / floor,
                         "limit": SAVE_TARGET, "unit": "x"})
        if f"{fmt}_algo_from_checkpoint" in a:
            rows.append({"part": "a", "format": fmt, "target": f"Algorithm.from_checkpoint ({fc_src})",
                         "value": a[f"{fmt}_algo_from_checkpoint"]["median_s"], "limit": fc_limit,
                         "unit": "s"})
    rows += _subset_rows(res)
    for row in rows:
        row["ok"] = row["value"] <= row["limit"]
    return rows


def _subset_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Part b's targets: the issue's ratio as first written (``"judged": False``, see
    :data:`SUBSET_TARGET`), then the two it is judged by."""
    b = res.get("b", {}).get("times", {})
    if "algo_all" not in b or "algo_subset" not in b:
        return []
    n = res["b"]["num_policies"]
    med = {k: v["median_s"] for k, v in b.items()}
    rows = [{"part": "b", "format": "pickle", "target": f"from_checkpoint 2 of {n} / all (as first written)",
             "value": med["algo_subset"] / med["algo_all"], "limit": SUBSET_TARGET, "unit": "%",
             "judged": False}]
    if "algo_none" in med:
        rows.append({"part": "b", "format": "pickle",
                     "target": f"from_checkpoint 2 of {n} / all, less the fixed cost (policy_ids=[])",
                     "value": (med["algo_subset"] - med["algo_none"]) / (med["algo_all"] - med["algo_none"]),
                     "limit": SUBSET_POLICY_PART_TARGET, "unit": "%"})
    if "algo_subset_alone" in med:
        rows.append({"part": "b", "format": "pickle",
                     "target": f"from_checkpoint 2 of {n} / the same 2 from a checkpoint of only them",
                     "value": med["algo_subset"] / med["algo_subset_alone"], "limit": SUBSET_VS_ALONE_TARGET,
                     "unit": "x"})
    return rows


def _t(x: float) -> str:
    return f"{x:.4f}" if x < 10 else f"{x:.2f}"


def report(res: dict[str, Any], args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    info = res["machine"]
    fs = info["filesystem"]
    print(f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB RAM; "
          f"Python {info['python']}, numpy {info['numpy']}, torch {res['torch']} "
          f"({res['torch_threads']} threads); "
          f"load average at start {res['loadavg']}")
    print(f"Benchmark dir: {info['bench_dir']} ({fs.get('type', '?')} on {fs.get('device', '?')}); "
          f"{args.repeat} run(s) after {args.warmup} warm-up round(s), ratios on the median")
    rl = res.get("rllib")
    if rl is None and {"a", "c"} & set(args.parts):  # (part b has no RLlib baseline)
        print("ray is not installed: RLlib's figures below are reported by the issue, not measured here.")

    if "a" in res:
        a = res["a"]
        t = a["times"]
        print()
        print(f"### a. PPO CartPole-v1, fcnet_hiddens {a['hiddens']}: {a['num_params']:,} parameters, "
              f"{a['array_bytes'] / MB:.1f} MB of weights + Adam state")
        print()
        print(f"First build {a['first_build_s']:.2f} s, one train() (256 steps, 1 epoch) "
              f"{a['train_s']:.2f} s; settling {a['settle_bytes'] / MB:.0f} MB before each timed operation.")
        print()
        print("| operation | format | median (s) | best (s) | ratio (median) | compared with |")
        print("| --- | --- | ---: | ---: | ---: | --- |")

        def line(label: str, fmt: str, key: str, base: str | None, what: str = "") -> None:
            if key not in t:
                return
            med, best = t[key]["median_s"], t[key]["best_s"]
            ratio = f"{med / t[base]['median_s']:.2f}x" if base and base in t else ""
            print(f"| {label} | {fmt} | {_t(med)} | {_t(best)} | {ratio} | {what} |")

        line("raw write+fsync of the arrays' bytes", "-", "raw_write", None)
        line("raw read (warm), for scale", "-", "raw_read_warm", None)
        line("algo.get_state() (in memory), for scale", "-", "get_state", None)
        line("config.build() without a checkpoint, for scale", "-", "build_fresh", None)
        for fmt in args.formats:
            size = a["checkpoint_bytes"].get(fmt)
            line(f"algo.save (durable){f', {size / MB:.1f} MB on disk' if size else ''}", fmt,
                 f"{fmt}_save", "raw_write", "raw write+fsync")
            line("algo.save(block=False): caller blocked (the snapshot)", fmt, f"{fmt}_save_async_block",
                 f"{fmt}_save", "algo.save (durable)")
            line("algo.save(block=False): until result()", fmt, f"{fmt}_save_async_total", f"{fmt}_save",
                 "algo.save (durable)")
            line("algo.save(block=False) and an update at once (waits for the copy)", fmt,
                 f"{fmt}_save_async_update", f"{fmt}_save", "algo.save (durable)")
            line("read_checkpoint (verified read + decode)", fmt, f"{fmt}_read_checkpoint", "raw_read_warm",
                 "raw read (warm)")
            line("Algorithm.from_checkpoint", fmt, f"{fmt}_algo_from_checkpoint", "raw_read_warm",
                 "raw read (warm)")
            line("Policy.from_checkpoint (policy dir)", fmt, f"{fmt}_policy_from_checkpoint", "raw_read_warm",
                 "raw read (warm)")
        if rl and "from_checkpoint" in rl:
            s = rl["from_checkpoint"]
            print(f"| RLlib Algorithm.from_checkpoint (measured here) | - | {_t(s['median_s'])} | "
                  f"{_t(s['best_s'])} | | |")
        else:
            lo, hi = RLLIB_FROM_CHECKPOINT_S
            note = f" ({rl['from_checkpoint_error']})" if rl and "from_checkpoint_error" in rl else ""
            print("| RLlib Algorithm.from_checkpoint: reported by the issue's author, not measured "
                  f"here{note} | - | {lo:.2f}-{hi:.2f} | | | |")

    if "b" in res:
        b = res["b"]
        t = b["times"]
        n = b["num_policies"]
        print()
        print(f"### b. Subset restore: MultiAgentCartPole (2 agents), {n} policies [64, 64], pickle, "
              f"{b['checkpoint_bytes'] / MB:.2f} MB on disk")
        print()
        print(f"Build {b['build_s']:.2f} s, save {b['save_s']:.2f} s (once, not timed below).")
        print()
        print("| operation | policies | median (s) | best (s) | ratio to all (median) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, key_all, key_sub in (("Algorithm.from_checkpoint", "algo_all", "algo_subset"),
                                        ("Policy.from_checkpoint", "policy_all", "policy_subset")):
            if key_all not in t:
                continue
            print(f"| {label} | {n} | {_t(t[key_all]['median_s'])} | {_t(t[key_all]['best_s'])} | 1.00x |")
            extra = (("algo_none", "policy_ids=[] (the fixed cost)", 0),
                     ("algo_subset_warm", f"policy_ids={b['subset']} right after an untimed one of "
                      "two others (for information: CPU caches warm)", len(b["subset"])),
                     ("algo_subset_alone", f"policy_ids={b['subset']} of a checkpoint that holds only "
                      "them (what the other policies add)", len(b["subset"]))) \
                if key_all == "algo_all" else ()
            for key, what, count in ((key_sub, f"policy_ids={b['subset']}", len(b["subset"])), *extra):
                if key in t:
                    r = t[key]["median_s"] / t[key_all]["median_s"]
                    print(f"| {label}, {what} | {count} | {_t(t[key]['median_s'])} | "
                          f"{_t(t[key]['best_s'])} | {r:.3f}x ({100 * r:.1f} %) |")

    if "c" in res:
        cases = res["c"]["cases"]
        print()
        print("### c. Cold start serving: a fresh process, wall time from outside, the child's peak RSS")
        print()
        print("| process | wall median (s) | wall best (s) | peak RSS (MiB) | inside: imports / "
              "from_checkpoint / action (s) |")
        print("| --- | ---: | ---: | ---: | --- |")
        for name, s in cases.items():
            inside = ""
            if "inside_import_s_median" in s:
                inside = (f"{s['inside_import_s_median']:.3f} / {s['inside_from_checkpoint_s_median']:.3f} / "
                          f"{s['inside_action_s_median']:.4f}")
            print(f"| {name} | {_t(s['wall']['median_s'])} | {_t(s['wall']['best_s'])} | "
                  f"{s['peak_rss_median_bytes'] / MIB:.0f} | {inside} |")
        if rl and "cold_start" in rl:
            s = rl["cold_start"]
            print("| RLlib: Policy.from_checkpoint, 1 action (measured here) | "
                  f"{_t(s['wall']['median_s'])} | {_t(s['wall']['best_s'])} | "
                  f"{s['peak_rss_median_bytes'] / MIB:.0f} | |")
        else:
            note = f" ({rl['cold_start_error']})" if rl and "cold_start_error" in rl else ""
            print("| RLlib: Policy.from_checkpoint, 1 action: reported by the issue, not measured "
                  f"here{note} | {RLLIB_COLD_START_S} | | {RLLIB_COLD_START_MIB:.0f} | |")
        print()
        print("Peak RSS: the child's VmHWM as it ends (getrusage's ru_maxrss would count the parent's "
              "pages shared before exec).")
        dyn = [r["inside"].get("dynamo_imported") for s in cases.values() for r in s["runs"] if "inside" in r]
        if any(dyn):
            print("In the amber child, torch._dynamo was imported (torch.optim.Optimizer's constructor "
                  "imports it on first use): a large part of the from_checkpoint time above.")

    print()
    print("| part | format | target | measured | limit | result |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    shown = {"x": lambda v: f"{v:.2f}x", "s": lambda v: f"{v:.3f} s", "%": lambda v: f"{100 * v:.1f} %"}
    for row in rows:
        fmt = shown[row["unit"]]
        result = ("pass" if row["ok"] else "MISS") if row.get("judged", True) else \
            f"not judged ({'met' if row['ok'] else 'missed'})"
        print(f"| {row['part']} | {row['format']} | {row['target']} | {fmt(row['value'])} | "
              f"{fmt(row['limit'])} | {result} |")
    if not args.check:
        print("\n(--check not given: a missed target does not change the exit status; the targets are "
              "meant for full-size runs.)")
    for where, err in res["errors"].items():
        print(f"\nERROR in {where}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-model", type=int, nargs="+", default=None, metavar="N",
                        help="part a's fcnet_hiddens (default 2048 2048 2048)")
    parser.add_argument("--policies", type=int, default=None,
                        help="part b's number of policies (default 100)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs of each operation (default 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; smoke 0)")
    parser.add_argument("--formats", default="pickle,msgpack",
                        help="comma-separated formats (default pickle,msgpack)")
    parser.add_argument("--parts", default="abc", help="which parts to run (default abc)")
    parser.add_argument("--settle-mb", type=float, default=None,
                        help="MB touched and freed before each timed operation of part a (default: twice "
                             "the arrays' bytes + 16; 0: off)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in this process (default: torch's own)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run for CI: model [64, 64], 10 policies, 1 run, no warm-up")
    parser.add_argument("--dir", help="where to write (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the files written")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.size_model = args.size_model or ([64, 64] if smoke else [2048, 2048, 2048])
    args.policies = args.policies or (10 if smoke else 100)
    args.repeat = max(1, args.repeat or (1 if smoke else 3))
    args.warmup = max(0, args.warmup if args.warmup is not None else (0 if smoke else 1))
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if args.policies < 2:
        parser.error("--policies must be at least 2")

    import torch

    from amber.registry import get_registry

    if args.threads:
        torch.set_num_threads(args.threads)

    known = get_registry().names()
    unknown = [f for f in args.formats if f not in known]
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; registered: {', '.join(known)}")

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    bench = Path(tempfile.mkdtemp(prefix="amber-algo-bench-", dir=args.dir))
    os.environ.setdefault("AMBER_RESULTS_DIR", str(bench / "results"))
    errors: dict[str, str] = {}
    res: dict[str, Any] = {"machine": machine_info(bench), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads(), "loadavg": load_average(),
                           "errors": errors}
    t_start = time.perf_counter()
    try:
        parts = {"a": part_a, "b": part_b, "c": part_c}
        res["part_wall_s"] = {}
        for name, fn in parts.items():
            if name in args.parts:
                t0 = time.perf_counter()
                res[name] = fn(args, bench, errors)
                res["part_wall_s"][name] = time.perf_counter() - t0
        if rllib_installed() and not smoke and {"a", "c"} & set(args.parts):  # (their baselines)
            res["rllib"] = rllib_measure(args, bench)
    finally:
        if not args.keep:
            shutil.rmtree(bench, ignore_errors=True)
    res["wall_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = load_average()
    rows = evaluate(res, args.formats)
    report(res, args, rows)
    walls = ", ".join(f"{k} {v:.1f} s" for k, v in res["part_wall_s"].items())
    print(f"\nTotal wall time {res['wall_s']:.1f} s ({walls}); load average at the end {res['loadavg_end']} "
          "(a loaded machine slows torch's small parallel ops a lot: see --threads).")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "targets": rows, **res}, f, indent=2,
                      default=str)
    if errors:
        return 2
    if args.check and not all(row["ok"] for row in rows if row.get("judged", True)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
