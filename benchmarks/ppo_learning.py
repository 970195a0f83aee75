"""Does PPO learn with its defaults? Env steps and wall time to solve CartPole, single- and multi-agent.

What it runs, per seed (``--seeds``, default 0 1 2):

* *single*: ``PPOConfig().environment("CartPole-v1").debugging(seed=s)``,
  every other setting at its default (train_batch_size 4000, minibatch 128,
  30 epochs, lr 3e-4, model [256, 256] tanh), trained until
  ``episode_return_mean`` (the last 100 episodes) reaches 450, or
  ``--max-steps`` env steps (default 150,000);
* *multi*: the same defaults on MultiAgentCartPole with 2 agents, policies
  pol0 and pol1, agent i → f"pol{i}", until each policy's mean return over
  its last 100 episodes (``result["policy_return_mean"][pid]``) reaches 400,
  or ``--ma-max-steps`` env steps (default 300,000).

Reported per seed: whether and when the threshold was first reached (env
steps sampled, wall time of the ``train()`` calls, iterations), the final
and best mean return; then the median over the seeds (a seed that never
got there counts as slower than any that did).

``--smoke`` (CI): 2 iterations of each, train_batch_size 512, first seed
only; prints the returns and whether the mean return rose between the first
and the last iteration (for information: two short iterations need not).
Each iteration prints a progress line on stderr (``--quiet``: none).

Run from the repository root::

    python benchmarks/ppo_learning.py                     # seeds 0 1 2, both
    python benchmarks/ppo_learning.py --parts single --seeds 0 1 2 3 4
    python benchmarks/ppo_learning.py --smoke
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

SINGLE_TARGET = 450.0
MULTI_TARGET = 400.0
MULTI_POLICIES = ("pol0", "pol1")


def agent_to_policy(agent_id: Any, episode: Any = None, worker: Any = None, **kw: Any) -> str:
    """MultiAgentCartPole's agent i → policy f"pol{i}"."""
    return f"pol{agent_id}"


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def single_config(seed: int, smoke: bool) -> Any:
    from amber.algorithms.ppo import PPOConfig

    config = PPOConfig().environment("CartPole-v1").debugging(seed=seed)
    if smoke:
        config.training(train_batch_size=512)
    return config


def multi_config(seed: int, smoke: bool) -> Any:
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    config = (
        PPOConfig()
        .environment(MultiAgentCartPole, env_config={"num_agents": 2})
        .multi_agent(policies=set(MULTI_POLICIES), policy_mapping_fn=agent_to_policy)
        .debugging(seed=seed)
    )
    if smoke:
        config.training(train_batch_size=512)
    return config


def run_seed(kind: str, seed: int, max_steps: int, max_iters: int | None, smoke: bool,
             quiet: bool = False) -> dict[str, Any]:
    """Train one seed until the target (or the budget); the history and when the target was reached."""
    multi = kind == "multi"
    algo = (multi_config if multi else single_config)(seed, smoke).build()
    history: list[dict[str, Any]] = []
    first: dict[str, dict[str, Any]] = {}  # "all" (and each policy id for multi) → when first reached
    wall = 0.0
    try:
        while True:
            t0 = time.perf_counter()
            result = algo.train()
            wall += time.perf_counter() - t0
            row = {
                "iteration": int(result["training_iteration"]),
                "env_steps": int(result["num_env_steps_sampled_lifetime"]),
                "agent_steps": int(result.get("num_agent_steps_sampled_lifetime", 0)),
                "wall_s": wall,
                "return_mean": _num(result.get("episode_return_mean")),
                "policy_return_mean": {k: _num(v)
                                       for k, v in (result.get("policy_return_mean") or {}).items()},
            }
            history.append(row)
            if not quiet:
                pr = " ".join(f"{k} {v:.1f}" for k, v in row["policy_return_mean"].items())
                print(f"[{kind} seed {seed}] iteration {row['iteration']}: {row['env_steps']:,} env steps, "
                      f"return mean {row['return_mean']:.1f}{' (' + pr + ')' if multi else ''}, "
                      f"{wall:.1f} s", file=sys.stderr, flush=True)
            at = {k: row[k] for k in ("iteration", "env_steps", "agent_steps", "wall_s")}
            if multi:
                for pid in MULTI_POLICIES:
                    if pid not in first and row["policy_return_mean"].get(pid, math.nan) >= MULTI_TARGET:
                        first[pid] = at
                if "all" not in first and all(pid in first for pid in MULTI_POLICIES):
                    first["all"] = at
            elif "all" not in first and row["return_mean"] >= SINGLE_TARGET:
                first["all"] = at
            if not smoke and "all" in first:
                break
            if row["env_steps"] >= max_steps or (max_iters is not None and row["iteration"] >= max_iters):
                break
    finally:
        algo.stop()
    returns = [h["return_mean"] for h in history if not math.isnan(h["return_mean"])]
    out: dict[str, Any] = {
        "kind": kind,
        "seed": seed,
        "reached": "all" in first,
        "first": first,
        "iterations": len(history),
        "env_steps": history[-1]["env_steps"] if history else 0,
        "agent_steps": history[-1]["agent_steps"] if history else 0,
        "wall_s": wall,
        "final_return": history[-1]["return_mean"] if history else math.nan,
        "best_return": max(returns) if returns else math.nan,
        "final_policy_returns": history[-1]["policy_return_mean"] if history else {},
        "history": history,
    }
    if len(history) >= 2:
        a, b = history[0], history[-1]
        out["rose"] = b["return_mean"] > a["return_mean"]
        if multi:
            out["policy_rose"] = {pid: b["policy_return_mean"].get(pid, math.nan)
                                  > a["policy_return_mean"].get(pid, math.nan) for pid in MULTI_POLICIES}
    return out


def finite(tree: Any) -> Any:
    """The tree with NaN and infinities as None (strict JSON)."""
    if isinstance(tree, dict):
        return {k: finite(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite(v) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def median_reached(runs: list[dict[str, Any]], key: str) -> tuple[float, int]:
    """The median of ``first["all"][key]`` over the seeds (infinite for a seed that never got there)."""
    vals = [r["first"]["all"][key] if r["reached"] else math.inf for r in runs]
    return statistics.median(vals), sum(r["reached"] for r in runs)


def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report_full(kind: str, runs: list[dict[str, Any]], budget: int) -> None:
    multi = kind == "multi"
    target = MULTI_TARGET if multi else SINGLE_TARGET
    print()
    if multi:
        print(f"### MultiAgentCartPole (2 agents, pol0/pol1): each policy's mean return >= {target:.0f}, "
              f"budget {budget:,} env steps")
        print()
        print("| seed | reached | env steps | agent steps | wall (s) | iterations | "
              "pol0 >= 400 at (env steps) | pol1 >= 400 at (env steps) | final pol0 | final pol1 |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    else:
        print(f"### CartPole-v1: episode_return_mean >= {target:.0f}, budget {budget:,} env steps")
        print()
        print("| seed | reached | env steps | wall (s) | iterations | final return | best return |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        at = r["first"].get("all")
        steps = f"{at['env_steps']:,}" if at else f"> {r['env_steps']:,}"
        wall = _f(at["wall_s"]) if at else f"> {_f(r['wall_s'])}"
        iters = str(at["iteration"]) if at else f"> {r['iterations']}"
        reached = "yes" if at else "no"
        if multi:
            agent = f"{at['agent_steps']:,}" if at else f"> {r['agent_steps']:,}"
            per = [f"{r['first'][p]['env_steps']:,}" if p in r["first"] else "-" for p in MULTI_POLICIES]
            fin = [_f(r["final_policy_returns"].get(p, math.nan)) for p in MULTI_POLICIES]
            print(f"| {r['seed']} | {reached} | {steps} | {agent} | {wall} | {iters} | {per[0]} | {per[1]} | "
                  f"{fin[0]} | {fin[1]} |")
        else:
            print(f"| {r['seed']} | {reached} | {steps} | {wall} | {iters} | {_f(r['final_return'])} | "
                  f"{_f(r['best_return'])} |")
    med_steps, n = median_reached(runs, "env_steps")
    med_wall, _ = median_reached(runs, "wall_s")
    if math.isinf(med_steps):
        print(f"| median | {n} of {len(runs)} | not reached | | | | |" + (" | | |" if multi else ""))
    else:
        line = f"| median | {n} of {len(runs)} | {med_steps:,.0f} |"
        line += " |" if multi else ""
        line += f" {med_wall:.1f} | | | |" + (" | |" if multi else "")
        print(line)


def report_smoke(kind: str, runs: list[dict[str, Any]]) -> None:
    print()
    print(f"### smoke: {kind} ({'MultiAgentCartPole, pol0/pol1' if kind == 'multi' else 'CartPole-v1'}), "
          "train_batch_size 512")
    print()
    print("| seed | iteration | env steps | wall (s) | return mean | pol0 | pol1 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        for h in r["history"]:
            pr = h["policy_return_mean"]
            print(f"| {r['seed']} | {h['iteration']} | {h['env_steps']:,} | {h['wall_s']:.2f} | "
                  f"{_f(h['return_mean'])} | {_f(pr.get('pol0', math.nan))} | "
                  f"{_f(pr.get('pol1', math.nan))} |")
    for r in runs:
        if "rose" in r:
            h0, h1 = r["history"][0], r["history"][-1]
            msg = (f"seed {r['seed']}: mean return {'rose' if r['rose'] else 'did not rise'} from the "
                   f"first to the last iteration ({_f(h0['return_mean'])} -> {_f(h1['return_mean'])})")
            if "policy_rose" in r:
                a, b = h0["policy_return_mean"], h1["policy_return_mean"]
                msg += "; " + ", ".join(
                    f"{p} {'rose' if up else 'did not rise'} ({_f(a.get(p, math.nan))} -> "
                    f"{_f(b.get(p, math.nan))})" for p, up in r["policy_rose"].items())
            print(f"\n{msg}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--max-steps", type=int, default=150_000,
                        help="single-agent budget in env steps (default 150000)")
    parser.add_argument("--ma-max-steps", type=int, default=300_000,
                        help="multi-agent budget in env steps (default 300000)")
    parser.add_argument("--parts", default="single,multi",
                        help="comma-separated: single, multi (default single,multi)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own)")
    parser.add_argument("--smoke", action="store_true",
                        help="CI: 2 iterations of each with train_batch_size 512, first seed only")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", metavar="PATH", help="also write every number (and each iteration) as JSON")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("single", "multi")]
    if bad or not parts:
        parser.error(f"--parts takes single and/or multi, not {args.parts!r}")
    seeds = args.seeds[:1] if args.smoke else args.seeds

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"load average at start {load_average()}; seeds {seeds}{'; smoke run' if args.smoke else ''}")
    t_start = time.perf_counter()
    res: dict[str, Any] = {"seeds": seeds, "smoke": args.smoke, "torch_threads": torch.get_num_threads(),
                           "loadavg_start": load_average()}
    for kind in parts:
        budget = args.ma_max_steps if kind == "multi" else args.max_steps
        runs = [run_seed(kind, s, budget, 2 if args.smoke else None, args.smoke, args.quiet) for s in seeds]
        res[kind] = {"budget_env_steps": budget, "runs": runs}
        if args.smoke:
            report_smoke(kind, runs)
        else:
            report_full(kind, runs, budget)
            med_steps, n = median_reached(runs, "env_steps")
            med_wall, _ = median_reached(runs, "wall_s")
            res[kind].update({"reached": n, "median_env_steps": med_steps, "median_wall_s": med_wall})
    res["wall_s"] = time.perf_counter() - t_start
    res["loadavg_end"] = load_average()
    print(f"\nTotal wall time {res['wall_s']:.1f} s; load average at the end {res['loadavg_end']}.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(finite(res), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
