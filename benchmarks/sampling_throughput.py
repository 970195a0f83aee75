"""Sampling throughput (env steps per second) with 0, 1 and 2 env runners on Ray.

``num_env_runners=0`` samples in this process; N > 0 samples on N Ray actors
(:mod:`amber.envs.ray_runners`), each with ``--envs`` env copies, and this
process waits for all of them. What is timed is one ``env_runner.sample(steps)``
call (after ``sync_weights``, so the broadcast of the weights is included),
PPO's default [256, 256] policy acting, after one warmup call; the median of
``--repeat`` calls is reported. Ray is started here (``--cpus`` CPUs) unless it
already runs. Run from the repository root::

    python benchmarks/sampling_throughput.py                       # CartPole-v1 and Acrobot-v1
    python benchmarks/sampling_throughput.py --runners 0 1 2 4 --envs 8 --steps 8000
    python benchmarks/sampling_throughput.py --smoke               # a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

from checkpoint_io import load_average


def measure(env: str, runners: int, envs: int, steps: int, repeat: int) -> dict[str, Any]:
    """Median env steps/s of ``repeat`` sample calls of ``steps`` env steps (after one warmup)."""
    from amber.algorithms.ppo import PPOConfig

    config = (PPOConfig().environment(env).debugging(seed=0).reporting(log_results=False)
              .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs,
                           num_cpus_per_env_runner=0.5))
    algo = config.build()
    try:
        runner = algo.env_runner
        runner.sync_weights()
        runner.sample(steps)  # warmup: the actors' first calls
        rates = []
        for _ in range(repeat):
            start = time.perf_counter()
            runner.sync_weights()
            _, metrics = runner.sample(steps)
            rates.append(metrics["num_env_steps"] / (time.perf_counter() - start))
        return {"env": env, "runners": runners, "envs": envs, "steps_per_s": statistics.median(rates)}
    finally:
        algo.stop()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every (env, runner count) and print the table; return its rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envs-ids", nargs="+", default=["CartPole-v1", "Acrobot-v1"], dest="env_ids")
    parser.add_argument("--runners", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--envs", type=int, default=4, help="env copies per runner")
    parser.add_argument("--steps", type=int, default=4000, help="env steps per timed sample call")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray started here")
    parser.add_argument("--smoke", action="store_true", help="tiny: CartPole, 0 and 1 runners, 200 steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.env_ids, args.runners, args.steps, args.repeat = ["CartPole-v1"], [0, 1], 200, 1
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rows = [measure(env, n, args.envs, args.steps, args.repeat)
                for env in args.env_ids for n in args.runners]
    finally:
        if started:
            ray.shutdown()
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: python benchmarks/sampling_throughput.py {shown}")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load_average()}; ray {ray.__version__} "
          f"({f'started here with {args.cpus} CPUs' if started else 'already running'})")
    print(f"{args.envs} env copies per runner, {args.steps} env steps per sample call, "
          f"median of {args.repeat}\n")
    print("| env | num_env_runners | env steps / s | vs 0 runners |")
    print("|---|---|---|---|")
    for row in rows:
        base = next((r["steps_per_s"] for r in rows if r["env"] == row["env"] and r["runners"] == 0), None)
        ratio = f"{row['steps_per_s'] / base:.2f}x" if base else "n/a"
        print(f"| {row['env']} | {row['runners']} | {row['steps_per_s']:.0f} | {ratio} |")
    return rows


if __name__ == "__main__":
    main()
