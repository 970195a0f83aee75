"""Does DQN learn CartPole? Env steps and wall time until the mean return reaches 400.

What it runs, per seed (``--seeds``, default 0 1 2): DQN on CartPole-v1 with
``--config`` (default ``tuned``, below; ``defaults``: DQNConfig's own
defaults, RLlib's), trained until ``episode_return_mean`` (the mean over
the last 100 episodes, exploration included) reaches 400, or ``--max-steps``
env steps (default 100,000). ``--set key=value`` overrides one training
setting (a JSON value), e.g. ``--set lr=0.002 --set 'model={"fcnet_hiddens": [128]}'``.

The tuned config (RLlib's tuned-example style: a documented config, not
new defaults)::

    DQNConfig().environment("CartPole-v1").training(**TUNED)

Reported per seed: whether and when the target was first reached (env
steps sampled, wall time of the ``train()`` calls, iterations), the final
and best mean return; then the median over the seeds (a seed that never
got there counts as slower than any that did).

``--speed N``: instead, the iteration speed of both configs: after two
warm-up iterations (learning has started), N ``train()`` calls of 1,000 env
steps, with the time spent in ``update_policy`` (the gradient updates and
target syncs) and in ``env_runner.sample`` (acting and env steps) measured inside.

``--smoke`` (CI): 2 iterations of 500 env steps, first seed only.
Each iteration prints a progress line on stderr (``--quiet``: none).

Run from the repository root::

    python benchmarks/dqn_learning.py                      # seeds 0 1 2, the tuned config
    python benchmarks/dqn_learning.py --config defaults --seeds 0
    python benchmarks/dqn_learning.py --speed 5
    python benchmarks/dqn_learning.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

from checkpoint_io import load_average

TARGET = 400.0

#: The tuned CartPole-v1 settings (everything else at DQNConfig's defaults).
TUNED: dict[str, Any] = {
    "model": {"fcnet_hiddens": [128, 128], "fcnet_activation": "relu"},
    "train_batch_size": 64,
    "training_intensity": 16,  # one update of 64 rows per 4 sampled steps
    "n_step": 3,
    "epsilon": [(0, 1.0), (5_000, 0.02)],
    "replay_buffer_config": {"capacity": 100_000},  # keeps every transition of the budget: no forgetting
}


def make_config(name: str, seed: int, overrides: dict[str, Any], smoke: bool) -> Any:
    """The DQN config of a run: ``tuned`` or ``defaults``, then the overrides."""
    from amber.algorithms.dqn import DQNConfig

    config = DQNConfig().environment("CartPole-v1").debugging(seed=seed)
    if name == "tuned":
        config.training(**TUNED)
    if overrides:
        config.training(**overrides)
    if smoke:
        config.training(num_steps_sampled_before_learning_starts=200).reporting(
            min_sample_timesteps_per_iteration=500)
    return config


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def run_seed(config: Any, seed: int, max_steps: int, max_iters: int | None, smoke: bool,
             quiet: bool) -> dict[str, Any]:
    """Train one seed until the target (or the budget); its history and when the target was reached."""
    algo = config.build()
    history: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    wall = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            result = algo.train()
            wall += time.perf_counter() - t0
            row = {"iteration": int(result["training_iteration"]),
                   "env_steps": int(result["num_env_steps_sampled_lifetime"]),
                   "wall_s": wall, "return_mean": _num(result.get("episode_return_mean")),
                   "updates": int(result.get("num_updates_lifetime", 0))}
            history.append(row)
            if not quiet:
                print(f"[seed {seed}] iteration {row['iteration']}: {row['env_steps']:,} env steps, "
                      f"return mean {row['return_mean']:.1f}, {row['updates']:,} updates, {wall:.1f} s",
                      file=sys.stderr, flush=True)
            if first is None and row["return_mean"] >= TARGET:
                first = {k: row[k] for k in ("iteration", "env_steps", "wall_s")}
                if not smoke:
                    break
            if row["env_steps"] >= max_steps or (max_iters is not None and row["iteration"] >= max_iters):
                break
    finally:
        algo.stop()
    returns = [h["return_mean"] for h in history if not math.isnan(h["return_mean"])]
    return {"seed": seed, "reached": first is not None, "first": first, "iterations": len(history),
            "env_steps": history[-1]["env_steps"] if history else 0, "wall_s": wall,
            "s_per_1000_steps": 1000 * wall / max(1, history[-1]["env_steps"] if history else 1),
            "final_return": history[-1]["return_mean"] if history else math.nan,
            "best_return": max(returns) if returns else math.nan, "history": history}


def iteration_speed(name: str, iterations: int, smoke: bool) -> dict[str, Any]:
    """Seconds per ``train()`` of one config, split into updates, sampling and the rest."""
    algo = make_config(name, 0, {}, smoke).build()
    try:
        for _ in range(2):
            algo.train()
        spent = {"update": 0.0, "sample": 0.0}
        update, sample = algo.update_policy, algo.env_runner.sample

        def timed_update(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return update(*a, **kw)
            finally:
                spent["update"] += time.perf_counter() - t0

        def timed_sample(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return sample(*a, **kw)
            finally:
                spent["sample"] += time.perf_counter() - t0

        algo.update_policy, algo.env_runner.sample = timed_update, timed_sample
        t0 = time.perf_counter()
        updates = 0
        for _ in range(iterations):
            updates += int(algo.train()["num_updates_this_iter"])
        total = (time.perf_counter() - t0) / iterations
    finally:
        algo.stop()
    per = {k: v / iterations for k, v in spent.items()}
    return {"config": name, "s_per_iteration": total, "updates_per_iteration": updates / iterations,
            "update_s": per["update"], "sample_s": per["sample"],
            "other_s": total - per["update"] - per["sample"],
            "ms_per_update": 1000 * per["update"] / max(1.0, updates / iterations)}


def median_reached(runs: list[dict[str, Any]], key: str) -> tuple[float, int]:
    """The median of ``first[key]`` over the seeds (infinite for a seed that never got there)."""
    vals = [r["first"][key] if r["reached"] else math.inf for r in runs]
    return statistics.median(vals), sum(r["reached"] for r in runs)


def finite(tree: Any) -> Any:
    """The tree with NaN and infinities as None (strict JSON)."""
    if isinstance(tree, dict):
        return {k: finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(runs: list[dict[str, Any]], budget: int, smoke: bool) -> None:
    print()
    if smoke:
        print("### smoke: DQN CartPole-v1, 2 iterations of 500 env steps")
        print()
        print("| seed | iteration | env steps | wall (s) | return mean | updates |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in runs:
            for h in r["history"]:
                print(f"| {r['seed']} | {h['iteration']} | {h['env_steps']:,} | {h['wall_s']:.2f} | "
                      f"{_f(h['return_mean'])} | {h['updates']:,} |")
        return
    print(f"### CartPole-v1: episode_return_mean >= {TARGET:.0f}, budget {budget:,} env steps")
    print()
    print("| seed | reached | env steps | wall (s) | iterations | s / 1000 env steps | final return | "
          "best return |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        at = r["first"]
        steps = f"{at['env_steps']:,}" if at else f"> {r['env_steps']:,}"
        wall = _f(at["wall_s"]) if at else f"> {_f(r['wall_s'])}"
        iters = str(at["iteration"]) if at else f"> {r['iterations']}"
        print(f"| {r['seed']} | {'yes' if at else 'no'} | {steps} | {wall} | {iters} | "
              f"{r['s_per_1000_steps']:.2f} | {_f(r['final_return'])} | {_f(r['best_return'])} |")
    med_steps, n = median_reached(runs, "env_steps")
    med_wall, _ = median_reached(runs, "wall_s")
    if math.isinf(med_steps):
        print(f"| median | {n} of {len(runs)} | not reached | | | | | |")
    else:
        print(f"| median | {n} of {len(runs)} | {med_steps:,.0f} | {med_wall:.1f} | | | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--config", choices=("tuned", "defaults"), default="tuned",
                        help="the tuned CartPole settings (default) or DQNConfig's defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                        help="override one training setting (repeatable)")
    parser.add_argument("--max-steps", type=int, default=100_000, help="budget in env steps (default 100000)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--speed", type=int, default=0, metavar="N",
                        help="measure the iteration speed of both configs over N iterations instead")
    parser.add_argument("--smoke", action="store_true", help="CI: 2 short iterations, first seed only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", metavar="PATH", help="also write every number (and each iteration) as JSON")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=JSON, not {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    seeds = args.seeds[:1] if args.smoke else args.seeds

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {**(TUNED if args.config == "tuned" else {}), **overrides}
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); load average at start "
          f"{load_average()}; seeds {seeds}; config {args.config}{'; smoke run' if args.smoke else ''}")
    print(f"training settings beyond DQNConfig's defaults: {json.dumps(settings)}")
    t_start = time.perf_counter()
    if args.speed:
        rows = [iteration_speed(name, args.speed, args.smoke) for name in ("defaults", "tuned")]
        print(f"\n### DQN CartPole-v1 iteration speed: mean of {args.speed} iterations after 2 warm-up "
              "ones\n")
        print("| config | s / iteration | updates / iteration | ms / update | updates (s) | sampling (s) | "
              "rest (s) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['config']} | {r['s_per_iteration']:.2f} | {r['updates_per_iteration']:.0f} | "
                  f"{r['ms_per_update']:.2f} | {r['update_s']:.2f} | {r['sample_s']:.2f} | "
                  f"{r['other_s']:.2f} |")
        print(f"\nLoad average at the end {load_average()}.")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(finite({"speed": rows, "iterations": args.speed}), f, indent=2)
        return 0
    runs = [run_seed(make_config(args.config, s, overrides, args.smoke), s, args.max_steps,
                     2 if args.smoke else None, args.smoke, args.quiet) for s in seeds]
    report(runs, args.max_steps, args.smoke)
    res: dict[str, Any] = {"seeds": seeds, "config": args.config, "settings": settings, "smoke": args.smoke,
                           "torch_threads": torch.get_num_threads(), "budget_env_steps": args.max_steps,
                           "runs": runs}
    if not args.smoke:
        med_steps, n = median_reached(runs, "env_steps")
        med_wall, _ = median_reached(runs, "wall_s")
        res.update({"reached": n, "median_env_steps": med_steps, "median_wall_s": med_wall})
    res["wall_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = load_average()
    print(f"\nTotal wall time {res['wall_s']:.1f} s; load average at the end {res['loadavg_end']}.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(finite(res), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
