"""Does tf2 PPO (DQN, SAC) learn as torch's does? Env steps and time to the target, per framework.

What it runs, per framework (``--frameworks``, default tf2 torch) and seed
(``--seeds``, default 0): ``PPOConfig().environment("CartPole-v1")
.framework(fw).debugging(seed=s)``, every other setting at its default
(train_batch_size 4000, minibatch 128, 30 epochs, lr 3e-4, model [256, 256]
tanh), trained until ``episode_return_mean`` reaches 450 or ``--max-steps``
env steps (default 150,000).

Reported per run: whether and when 450 was first reached (env steps, wall
time of the ``train()`` calls, iterations), the best mean return, and the
mean wall time of one ``train()`` iteration (sampling and update).

``--algo dqn``: DQN with ``benchmarks/dqn_learning.py``'s tuned config on
CartPole-v1, target 400, budget 100,000 env steps; ``--algo sac``: SAC's
defaults on Pendulum-v1 (1,000 env steps per iteration), target -250, budget
20,000 env steps.

``--smoke`` (CI): 2 iterations per framework with train_batch_size 512,
2 epochs, model [32, 32].

Run from the repository root::

    python benchmarks/tf2_learning.py
    python benchmarks/tf2_learning.py --seeds 0 1 2
    python benchmarks/tf2_learning.py --algo dqn --seeds 0
    python benchmarks/tf2_learning.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any

#: Per algorithm: the env, the mean return to reach and the default budget in env steps.
TARGETS: dict[str, tuple[str, float, int]] = {
    "ppo": ("CartPole-v1", 450.0, 150_000), "dqn": ("CartPole-v1", 400.0, 100_000),
    "sac": ("Pendulum-v1", -250.0, 20_000),
}
TARGET = TARGETS["ppo"][1]


def config_for(framework: str, seed: int, smoke: bool, algo: str = "ppo") -> Any:
    """The benchmark's config, in ``framework``: PPO's defaults on CartPole (DQN tuned, SAC defaults)."""
    small = {"model": {"fcnet_hiddens": [32, 32]}, "num_steps_sampled_before_learning_starts": 200}
    if algo in ("dqn", "sac"):
        from amber.algorithms.dqn import DQNConfig
        from amber.algorithms.sac import SACConfig

        cls, env = (DQNConfig, "CartPole-v1") if algo == "dqn" else (SACConfig, "Pendulum-v1")
        config = cls().environment(env).framework(framework).debugging(seed=seed)
        config.reporting(log_results=False, min_sample_timesteps_per_iteration=250 if smoke else 1000)
        if algo == "dqn":
            from dqn_learning import TUNED

            config.training(**TUNED)
        return config.training(**small) if smoke else config
    from amber.algorithms.ppo import PPOConfig

    config = PPOConfig().environment("CartPole-v1").framework(framework).debugging(seed=seed)
    config.reporting(log_results=False)
    if smoke:
        config.training(train_batch_size=512, num_epochs=2, model={"fcnet_hiddens": [32, 32]})
    return config


def run(framework: str, seed: int, max_steps: int, max_iters: int | None, smoke: bool,
        quiet: bool, algo_name: str = "ppo") -> dict[str, Any]:
    """Train one run until the target (or the budget)."""
    target = TARGETS[algo_name][1]
    algo = config_for(framework, seed, smoke, algo_name).build()
    wall, iters, best, reached = 0.0, [], -math.inf, None
    steps = 0
    try:
        while True:
            t0 = time.perf_counter()
            result = algo.train()
            dt = time.perf_counter() - t0
            wall += dt
            iters.append(dt)
            steps = int(result["num_env_steps_sampled_lifetime"])
            ret = float(result["episode_return_mean"])
            best = max(best, ret) if not math.isnan(ret) else best
            if not quiet:
                print(f"[{framework} seed {seed}] iteration {len(iters)}: {steps:,} env steps, "
                      f"return mean {ret:.1f}, {wall:.1f} s", file=sys.stderr, flush=True)
            if reached is None and ret >= target:
                reached = {"env_steps": steps, "wall_s": wall, "iteration": len(iters)}
                if not smoke:
                    break
            if steps >= max_steps or (max_iters is not None and len(iters) >= max_iters):
                break
    finally:
        algo.stop()
    return {"framework": framework, "seed": seed, "reached": reached, "env_steps": steps, "wall_s": wall,
            "iterations": len(iters), "best_return": best,
            "s_per_iteration": statistics.mean(iters) if iters else math.nan}


def report(runs: list[dict[str, Any]], budget: int, algo: str = "ppo") -> None:
    """The markdown table."""
    env, target, _ = TARGETS[algo]
    what = {"ppo": "PPO defaults", "dqn": "DQN tuned (dqn_learning.py)", "sac": "SAC defaults"}[algo]
    print(f"### {env}, {what}: episode_return_mean >= {target:.0f}, budget {budget:,} env steps")
    print()
    print("| framework | seed | reached | env steps | wall (s) | iterations | best return | s / iteration |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        at = r["reached"]
        steps = f"{at['env_steps']:,}" if at else f"> {r['env_steps']:,}"
        wall = f"{at['wall_s']:.1f}" if at else f"> {r['wall_s']:.1f}"
        iters = str(at["iteration"]) if at else f"> {r['iterations']}"
        print(f"| {r['framework']} | {r['seed']} | {'yes' if at else 'no'} | {steps} | {wall} | {iters} | "
              f"{r['best_return']:.1f} | {r['s_per_iteration']:.2f} |")
    print()
    import importlib.metadata as md

    names = ("tensorflow", "tensorflow-cpu", "keras", "torch")
    versions = ", ".join(f"{name} {md.version(name)}" for name in names if _installed(name))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{versions}")


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table (and ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=["tf2", "torch"], choices=["tf2", "torch"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--algo", default="ppo", choices=sorted(TARGETS))
    parser.add_argument("--max-steps", type=int, default=None, help="budget (default: the algorithm's)")
    parser.add_argument("--smoke", action="store_true", help="2 tiny iterations per framework (CI)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--json", help="also write the runs here")
    args = parser.parse_args(argv)
    budget = args.max_steps or TARGETS[args.algo][2]
    runs = [run(fw, seed, budget, 2 if args.smoke else None, args.smoke, args.quiet, args.algo)
            for fw in args.frameworks for seed in (args.seeds[:1] if args.smoke else args.seeds)]
    report(runs, budget, args.algo)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
