"""Time of one PPO update on a CartPole-shaped batch (RLlib's PPO defaults for one iteration).

A synthetic batch of ``--samples`` steps (4 float observations, 2 actions,
sampled from the policy itself) goes through ``ppo_update`` with minibatch
128 and 30 epochs on separate [256, 256] tanh policy and value networks.
Each of ``--repeat`` runs starts from the same policy; the best and median
wall-clock times are printed, with the CPU time and the load average (the
numbers mean little on a loaded machine). Run from the repository root::

    python benchmarks/ppo_update_speed.py                 # best of 3
    python benchmarks/ppo_update_speed.py --threads 1     # torch single-threaded (no helper thread)
    python benchmarks/ppo_update_speed.py --epochs 1 --repeat 1   # smoke run

Each run times the update twice, with the speed machinery on
(``overlap=True``: the value network's backward pass and Adam step on a
helper thread when that is faster, picked by timing) and off (``overlap=False``:
one plain backward pass of ``ppo_loss`` and one Adam step), alternating, and
checks that both give bit-identical weights; the ratio is what the machinery buys.
"""

from __future__ import annotations

import argparse
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from checkpoint_io import load_average

from amber.algorithms.ppo.ppo_learner import ppo_update
from amber.policy.torch_policy import TorchPolicy


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
    obs_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    template = TorchPolicy(obs_space, gym.spaces.Discrete(2), config)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(args.samples, 4)).astype(np.float32)
    actions, _, extra = template.compute_actions(obs)
    batch = {"obs": obs, "actions": actions, **extra,
             "advantages": rng.normal(size=args.samples).astype(np.float32),
             "value_targets": (5 * rng.normal(size=args.samples)).astype(np.float32)}
    kwargs = dict(num_epochs=args.epochs, minibatch_size=args.minibatch, clip_param=0.2, vf_clip_param=10.0,
                  vf_loss_coeff=1.0, entropy_coeff=0.0, kl_coeff=0.2, kl_target=0.01, grad_clip=None)
    state = template.get_state()

    walls: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.repeat):
        weights = {}
        for overlap in (True, False):
            policy = TorchPolicy.from_state(state)
            load = load_average()
            t, c = time.perf_counter(), time.process_time()
            stats = ppo_update(policy, batch, rng=np.random.default_rng(i), overlap=overlap, **kwargs)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            walls[overlap].append(wall)
            weights[overlap] = policy.get_weights()
            print(f"run {i} overlap={overlap}: {wall:.2f} s wall, {cpu:.2f} s cpu, load {load}, "
                  f"{stats['num_grad_updates']} updates, kl {stats['kl']:.4f}")
        same = all(np.array_equal(weights[True][k], weights[False][k]) for k in weights[True])
        assert same, "overlap=True and overlap=False must give bit-identical weights"
    on, off = statistics.median(walls[True]), statistics.median(walls[False])
    print(f"torch threads {torch.get_num_threads()}, {args.samples} samples x {args.epochs} epochs: "
          f"overlap on best {min(walls[True]):.2f} s, median {on:.2f} s; off best {min(walls[False]):.2f} s, "
          f"median {off:.2f} s; on/off {on / off:.2f}x (weights identical)")
    print("\n| step | best (s) | median (s) | on / off |\n| --- | ---: | ---: | ---: |")
    print(f"| overlapped (on) | {min(walls[True]):.2f} | {on:.2f} | {on / off:.2f}x |")
    print(f"| plain (off) | {min(walls[False]):.2f} | {off:.2f} | 1.00x |")


if __name__ == "__main__":
    main()
