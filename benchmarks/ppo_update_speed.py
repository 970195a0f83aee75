"""Time of one PPO update on a CartPole-shaped batch (RLlib's PPO defaults for one iteration).

A synthetic batch of ``--samples`` steps (4 float observations, 2 actions,
sampled from the policy itself) goes through ``ppo_update`` with minibatch
128 and 30 epochs on separate [256, 256] tanh policy and value networks.
Each of ``--repeat`` rounds runs every step below once from the same policy,
alternating, so that a loaded machine slows them alike; the best and median
wall-clock times are printed, with the CPU time, the load average and the
GFLOP/s of the learning arithmetic. Run from the repository root::

    python benchmarks/ppo_update_speed.py                 # 3 rounds
    python benchmarks/ppo_update_speed.py --threads 1     # torch single-threaded (no helper thread)
    python benchmarks/ppo_update_speed.py --epochs 1 --repeat 1   # smoke run

The steps: ``fused`` (the default: hand-written gradients, the value network
on a helper thread when that is faster, picked by timing), ``fused inline``
(``overlap=False``: no helper thread), ``autograd`` (``fused=False``: the
autograd step, overlapped) and ``autograd plain`` (``fused=False,
overlap=False``: one backward pass of ``ppo_loss``). Each pair with and
without the helper thread must give bit-identical weights (checked); the fused
and autograd weights agree to float rounding (the largest difference is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from checkpoint_io import load_average
from ppo_iteration_speed import learning_flops

from amber.algorithms.ppo.ppo_learner import ppo_update
from amber.policy.torch_policy import TorchPolicy

STEPS = {"fused": {"fused": True, "overlap": True}, "fused inline": {"fused": True, "overlap": False},
         "autograd": {"fused": False, "overlap": True}, "autograd plain": {"fused": False, "overlap": False}}


def _batch(template: TorchPolicy, samples: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(samples, 4)).astype(np.float32)
    actions, _, extra = template.compute_actions(obs)
    return {"obs": obs, "actions": actions, **extra,
            "advantages": rng.normal(size=samples).astype(np.float32),
            "value_targets": (5 * rng.normal(size=samples)).astype(np.float32)}


def _check(weights: dict[str, dict[str, np.ndarray]]) -> float:
    """Assert the bit-identical pairs; return the largest fused-vs-autograd weight difference."""
    for a, b in (("fused", "fused inline"), ("autograd", "autograd plain")):
        same = all(np.array_equal(weights[a][k], weights[b][k]) for k in weights[a])
        assert same, f"{a} and {b} must give bit-identical weights"
    return max(float(np.abs(weights["fused"][k] - weights["autograd"][k]).max()) for k in weights["fused"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--minibatch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = {"model": {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}, "lr": 3e-4, "seed": 0,
              "grad_clip": None}
    template = TorchPolicy(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2), config)
    batch = _batch(template, args.samples)
    kwargs = dict(num_epochs=args.epochs, minibatch_size=args.minibatch, clip_param=0.2, vf_clip_param=10.0,
                  vf_loss_coeff=1.0, entropy_coeff=0.0, kl_coeff=0.2, kl_target=0.01, grad_clip=None)
    state = template.get_state()
    flops = learning_flops(args.samples, args.epochs)

    walls: dict[str, list[float]] = {name: [] for name in STEPS}
    for i in range(args.repeat):
        weights = {}
        for name, step in STEPS.items():
            policy = TorchPolicy.from_state(state)
            load = load_average()
            t, c = time.perf_counter(), time.process_time()
            stats = ppo_update(policy, batch, rng=np.random.default_rng(i), **step, **kwargs)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            walls[name].append(wall)
            weights[name] = policy.get_weights()
            print(f"run {i} {name}: {wall:.2f} s wall, {cpu:.2f} s cpu, {flops / wall / 1e9:.1f} GFLOP/s, "
                  f"load {load}, {stats['num_grad_updates']} updates, kl {stats['kl']:.4f}")
        print(f"run {i}: largest |fused - autograd| weight difference {_check(weights):.2e}")
    medians = {name: statistics.median(w) for name, w in walls.items()}
    base = medians["autograd"]
    print(f"torch threads {torch.get_num_threads()}, {args.samples} samples x {args.epochs} epochs, "
          f"{flops / 1e9:.1f} GFLOP: fused median {medians['fused']:.2f} s, autograd median {base:.2f} s, "
          f"fused / autograd {medians['fused'] / base:.2f}x")
    print("\n| step | best (s) | median (s) | GFLOP/s (median) | / autograd |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, w in walls.items():
        print(f"| {name} | {min(w):.2f} | {medians[name]:.2f} | {flops / medians[name] / 1e9:.1f} | "
              f"{medians[name] / base:.2f}x |")


if __name__ == "__main__":
    main()
