"""Time of one full PPO ``train()`` iteration on CartPole-v1, against Stable-Baselines3 and RLlib.

The config is RLlib's PPO defaults for one iteration: ``train_batch_size``
4000, ``minibatch_size`` 128, ``num_epochs`` 30, separate [256, 256] tanh
policy and value networks, one env. After one warmup iteration, ``--iters``
iterations are timed; the median is reported, split into sampling
(``env_runner.sample``), postprocessing (GAE) and learning (``ppo_update``).
When installed (optional), the same iteration is timed in Stable-Baselines3
(one ``learn(4000)`` call after a warmup call) and in RLlib (one
``algo.train()`` after a warmup); missing ones are skipped with a note.
Run from the repository root::

    python benchmarks/ppo_iteration_speed.py                # amber, SB3 and RLlib when installed
    python benchmarks/ppo_iteration_speed.py --iters 5 --json out.json
    python benchmarks/ppo_iteration_speed.py --smoke        # a few seconds: batch 256, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from checkpoint_io import load_average

HIDDENS = [256, 256]




def time_amber(batch: int, epochs: int, minibatch: int, iters: int, seed: int | None) -> dict[str, Any]:
    """Median seconds of ``iters`` ``algo.train()`` calls after one warmup, with a breakdown."""
    import amber.algorithms.ppo.ppo_learner as learner
    from amber.algorithms.ppo import PPOConfig

    config = (PPOConfig().environment("CartPole-v1")
              .training(train_batch_size=batch, minibatch_size=minibatch, num_epochs=epochs,
                        model={"fcnet_hiddens": HIDDENS, "fcnet_activation": "tanh"}))
    if seed is not None:
        config = config.debugging(seed=seed)
    algo = config.build()
    parts: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    original_update = learner.ppo_update
    algo.env_runner.sample = timed("sample", algo.env_runner.sample)  # type: ignore[method-assign]
    learner.ppo_update = timed("learn", original_update)
    rows = []
    try:
        for i in range(iters + 1):
            parts.clear()
            t = time.perf_counter()
            result = algo.train()
            total = time.perf_counter() - t
            if i == 0:
                continue  # warmup
            rows.append({"total": total, "sample": parts.get("sample", 0.0), "learn": parts.get("learn", 0.0),
                         "other": total - parts.get("sample", 0.0) - parts.get("learn", 0.0),
                         "return_mean": result["episode_return_mean"]})
    finally:
        learner.ppo_update = original_update
        algo.stop()
    out = {k: statistics.median(r[k] for r in rows) for k in ("total", "sample", "learn", "other")}
    out["runs"] = [r["total"] for r in rows]
    out["episode_return_mean"] = rows[-1]["return_mean"]
    return out


def time_sb3(batch: int, epochs: int, minibatch: int, iters: int, seed: int | None) -> dict[str, Any] | None:
    """Median seconds of ``iters`` ``learn(batch)`` calls after one warmup; None when not installed."""
    try:
        from stable_baselines3 import PPO
        from torch import nn
    except ImportError as e:
        print(f"note: Stable-Baselines3 not installed ({e}); skipped")
        return None
    import stable_baselines3

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=batch, batch_size=minibatch, n_epochs=epochs,
                policy_kwargs=dict(net_arch=dict(pi=HIDDENS, vf=HIDDENS), activation_fn=nn.Tanh),
                seed=seed, device="cpu", verbose=0)
    model.learn(batch)  # warmup
    runs = []
    for _ in range(iters):
        t = time.perf_counter()
        model.learn(batch, reset_num_timesteps=False)
        runs.append(time.perf_counter() - t)
    return {"total": statistics.median(runs), "runs": runs, "version": stable_baselines3.__version__}


def time_rllib(batch: int, epochs: int, minibatch: int, iters: int,
               seed: int | None) -> dict[str, Any] | None:
    """Median seconds of ``iters`` RLlib ``algo.train()`` calls after one warmup; None when not installed."""
    try:
        import ray
        from ray.rllib.algorithms.ppo import PPOConfig
    except ImportError as e:
        print(f"note: RLlib (ray[rllib]) not installed ({e}); skipped")
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        config = (PPOConfig().environment("CartPole-v1")
                  .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
                  .training(train_batch_size=batch, minibatch_size=minibatch, num_epochs=epochs,
                            model={"fcnet_hiddens": HIDDENS, "fcnet_activation": "tanh"})
                  .debugging(seed=seed))
        algo = config.build()
        algo.train()  # warmup
        runs = []
        for _ in range(iters):
            t = time.perf_counter()
            algo.train()
            runs.append(time.perf_counter() - t)
        algo.stop()
    finally:
        ray.shutdown()
    return {"total": statistics.median(runs), "runs": runs, "version": ray.__version__}


def learning_flops(batch: int, epochs: int, obs_dim: int = 4, n_actions: int = 2) -> float:
    """Multiply-adds x 2 of the learning phase: forward (x1) and backward (x2) of the policy and
    value MLPs over every sample of every epoch (the arithmetic that matters; activations and
    Adam are a few percent)."""
    def mlp(out: int) -> int:
        dims = [obs_dim, *HIDDENS, out]
        return sum(a * b for a, b in zip(dims, dims[1:], strict=False))
    per_sample = 2 * (mlp(n_actions) + mlp(1))  # multiply-adds of one forward pass, as flops
    return 3.0 * per_sample * batch * epochs


def matmul_peak(minibatch: int, seconds: float = 1.0) -> dict[str, float]:
    """GFLOP/s this machine's torch reaches on a large square matmul, and on the shapes PPO runs
    ([minibatch, 256] x [256, 256]), with torch's threads."""
    import torch

    def rate(m: int, k: int, n: int) -> float:
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                torch.mm(a, b, out=out)
            reps += 10
        return 2.0 * m * k * n * reps / (time.perf_counter() - t0) / 1e9

    return {"large_gflops": rate(1024, 1024, 1024), "ppo_shape_gflops": rate(minibatch, 256, 256)}


def _ratio(a: float, b: dict[str, Any] | None) -> str:
    return f"{a / b['total']:.2f}" if b else "n/a"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (after one warmup)")
    parser.add_argument("--batch", type=int, default=4000, help="train_batch_size")
    parser.add_argument("--epochs", type=int, default=30, help="num_epochs")
    parser.add_argument("--minibatch", type=int, default=128, help="minibatch_size")
    parser.add_argument("--seed", type=int, default=0, help="seed (negative: unseeded)")
    parser.add_argument("--smoke", action="store_true", help="CI smoke run: batch 256, 2 epochs, 1 iteration")
    parser.add_argument("--no-sb3", action="store_true", help="skip Stable-Baselines3")
    parser.add_argument("--no-rllib", action="store_true", help="skip RLlib")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.epochs, args.iters = 256, 2, 1
    seed = None if args.seed < 0 else args.seed
    shape = (args.batch, args.epochs, args.minibatch, args.iters, seed)

    import torch

    load = load_average()
    amber = time_amber(*shape)
    sb3 = None if args.no_sb3 else time_sb3(*shape)
    rllib = None if args.no_rllib else time_rllib(*shape)

    print(f"\nPPO CartPole-v1, train_batch_size {args.batch}, minibatch {args.minibatch}, "
          f"{args.epochs} epochs, "
          f"[256, 256] tanh pi and vf; median of {args.iters} after 1 warmup; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {load}\n")
    print("| library | s / iteration | sampling | postprocess | learning | amber / this |")
    print("|---|---|---|---|---|---|")
    print(f"| amber | {amber['total']:.2f} | {amber['sample']:.2f} | {amber['other']:.2f} "
          f"| {amber['learn']:.2f} | 1.00 |")
    for name, res in (("Stable-Baselines3", sb3), ("RLlib", rllib)):
        if res:
            print(f"| {name} {res['version']} | {res['total']:.2f} | | | | {_ratio(amber['total'], res)} |")
        else:
            print(f"| {name} | not installed / skipped | | | | n/a |")
    flops = learning_flops(args.batch, args.epochs)
    peak = matmul_peak(args.minibatch, seconds=0.2 if args.smoke else 1.0)
    achieved = flops / amber["learn"] / 1e9 if amber["learn"] > 0 else 0.0
    print(f"\nLearning arithmetic: {flops / 1e9:.1f} GFLOP per iteration; amber's learning phase "
          f"ran at {achieved:.1f} GFLOP/s against a measured matmul peak of "
          f"{peak['large_gflops']:.1f} GFLOP/s (1024x1024x1024) and {peak['ppo_shape_gflops']:.1f} GFLOP/s "
          f"on PPO's shape ([{args.minibatch}, 256] x [256, 256]): the floor for learning is about "
          f"{flops / peak['ppo_shape_gflops'] / 1e9:.2f} s at the latter. Where amber's iteration went: "
          f"sampling {amber['sample']:.2f} s, learning {amber['learn']:.2f} s, the rest "
          f"{amber['other']:.2f} s.")
    results = {"config": {"train_batch_size": args.batch, "num_epochs": args.epochs,
                          "minibatch_size": args.minibatch, "iters": args.iters, "seed": seed},
               "amber": amber, "sb3": sb3, "rllib": rllib,
               "learning_gflop": flops / 1e9, "learning_gflops_achieved": achieved, "matmul_peak": peak,
               "ratio_amber_sb3": amber["total"] / sb3["total"] if sb3 else None,
               "ratio_amber_rllib": amber["total"] / rllib["total"] if rllib else None}
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
