"""Does SAC learn with its defaults? Env steps and wall time to reach -250 on Pendulum-v1.

What it runs, per seed (``--seeds``, default 0 1 2):
``SACConfig().environment("Pendulum-v1").debugging(seed=s)``, every other
setting at its default (RLlib's: actor_lr = critic_lr = alpha_lr = 3e-4,
tau 0.005, initial_alpha 1.0, target_entropy "auto", twin Q, model
[256, 256] relu, train_batch_size 256, learning from the 1,500th
transition, one update per env step), except that one ``train()`` samples
200 env steps instead of 1000 (``min_sample_timesteps_per_iteration``: it
only sets how often results are reported, not what is sampled or learned:
sampling and updates interleave step by step either way). Trained until the
mean return of the last ``--window`` episodes (default 10) reaches -250, or
``--max-steps`` env steps (default 20,000).

Reported per seed: whether and when the threshold was first reached (env
steps sampled, wall time of the ``train()`` calls), the final windowed
return, the best; then the median over the seeds (a seed that never got
there counts as slower than any that did).

``--smoke`` (CI): the first seed, 600 env steps with a small model
([32, 32], batch 64, learning from the 200th transition); prints the table.
Each iteration prints a progress line on stderr (``--quiet``: none).

Run from the repository root::

    python benchmarks/sac_learning.py                 # seeds 0 1 2
    python benchmarks/sac_learning.py --seeds 0 1 2 3 4 --json sac.json
    python benchmarks/sac_learning.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any

import numpy as np
from checkpoint_io import load_average

TARGET = -250.0
EPISODE = 200  # Pendulum-v1's time limit


def make_config(seed: int, smoke: bool) -> Any:
    from amber.algorithms.sac import SACConfig

    config = (SACConfig().environment("Pendulum-v1").debugging(seed=seed)
              .reporting(min_sample_timesteps_per_iteration=EPISODE))
    if smoke:
        config.training(model={"fcnet_hiddens": [32, 32]}, train_batch_size=64,
                        num_steps_sampled_before_learning_starts=200)
    return config


def episode_returns(algo: Any) -> list[float]:
    """The returns of the algorithm's last 100 finished episodes, oldest first.

    ``train()``'s result holds only their mean, max and min, so this reads the
    list they are computed from.
    """
    return list(algo.progress.recent_returns)


def run_seed(seed: int, max_steps: int, window: int, smoke: bool, quiet: bool) -> dict[str, Any]:
    """Train one seed until the target (or the budget); its history and when the target was reached."""
    algo = make_config(seed, smoke).build()
    history: list[dict[str, Any]] = []
    first: dict[str, Any] | None = None
    wall = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            result = algo.train()
            wall += time.perf_counter() - t0
            rets = episode_returns(algo)
            recent = float(np.mean(rets[-window:])) if len(rets) >= window else math.nan
            row = {"iteration": int(result["training_iteration"]),
                   "env_steps": int(result["num_env_steps_sampled_lifetime"]),
                   "episodes": int(result["episodes_total"]), "wall_s": wall, "window_return": recent,
                   "return_mean": float(result["episode_return_mean"]),
                   "alpha": (result["info"]["learner"].get("default_policy", {})
                             .get("learner_stats", {}).get("alpha_value", math.nan))}
            history.append(row)
            if not quiet:
                print(f"[seed {seed}] {row['env_steps']:,} env steps: mean of the last {window} episodes "
                      f"{recent:.1f}, alpha {row['alpha']:.3f}, {wall:.1f} s", file=sys.stderr, flush=True)
            if first is None and recent >= TARGET:
                first = {k: row[k] for k in ("iteration", "env_steps", "episodes", "wall_s")}
                if not smoke:
                    break
            if row["env_steps"] >= max_steps:
                break
    finally:
        algo.stop()
    windowed = [h["window_return"] for h in history if not math.isnan(h["window_return"])]
    return {"seed": seed, "reached": first is not None, "first": first, "env_steps": history[-1]["env_steps"],
            "wall_s": wall, "final_window_return": history[-1]["window_return"],
            "best_window_return": max(windowed) if windowed else math.nan, "history": history}


def finite(tree: Any) -> Any:
    """The tree with NaN and infinities as None (strict JSON)."""
    if isinstance(tree, dict):
        return {k: finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def median_reached(runs: list[dict[str, Any]], key: str) -> float:
    """The median of ``first[key]`` over the seeds (infinite for a seed that never got there)."""
    return statistics.median([r["first"][key] if r["reached"] else math.inf for r in runs])


def _f(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1f}"


def report(runs: list[dict[str, Any]], budget: int, window: int, smoke: bool) -> None:
    print()
    print(f"### Pendulum-v1: mean return of the last {window} episodes >= {TARGET:.0f}, budget {budget:,} "
          f"env steps{' (smoke: small model)' if smoke else ''}")
    print()
    print(f"| seed | reached | env steps | wall (s) | episodes | last-{window} return then | best |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        at = r["first"]
        steps = f"{at['env_steps']:,}" if at else f"> {r['env_steps']:,}"
        wall = f"{at['wall_s']:.1f}" if at else f"> {r['wall_s']:.1f}"
        episodes = str(at["episodes"]) if at else "-"
        then = next((h["window_return"] for h in r["history"] if at and h["iteration"] == at["iteration"]),
                    r["final_window_return"])
        print(f"| {r['seed']} | {'yes' if at else 'no'} | {steps} | {wall} | {episodes} | {_f(then)} | "
              f"{_f(r['best_window_return'])} |")
    reached = sum(r["reached"] for r in runs)
    med_steps, med_wall = median_reached(runs, "env_steps"), median_reached(runs, "wall_s")
    if math.isinf(med_steps):
        print(f"| median | {reached} of {len(runs)} | not reached | | | | |")
    else:
        print(f"| median | {reached} of {len(runs)} | {med_steps:,.0f} | {med_wall:.1f} | | | |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--max-steps", type=int, default=20_000, help="budget in env steps (default 20000)")
    parser.add_argument("--window", type=int, default=10, help="episodes averaged (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="CI: first seed, 600 env steps, small model")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", metavar="PATH", help="also write every number (and each iteration) as JSON")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.smoke else args.seeds
    budget = 600 if args.smoke else args.max_steps
    window = 2 if args.smoke else args.window

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads; the learner uses 1); "
          f"load average at start {load_average()}; seeds {seeds}{'; smoke run' if args.smoke else ''}")
    t_start = time.perf_counter()
    runs = [run_seed(s, budget, window, args.smoke, args.quiet) for s in seeds]
    report(runs, budget, window, args.smoke)
    res: dict[str, Any] = {"seeds": seeds, "smoke": args.smoke, "budget_env_steps": budget, "window": window,
                           "target": TARGET, "runs": runs, "reached": sum(r["reached"] for r in runs),
                           "median_env_steps": median_reached(runs, "env_steps"),
                           "median_wall_s": median_reached(runs, "wall_s"),
                           "wall_s": time.perf_counter() - t_start, "loadavg_end": load_average()}
    print(f"\nTotal wall time {res['wall_s']:.1f} s; load average at the end {res['loadavg_end']}.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(finite(res), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
