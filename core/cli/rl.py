"""``amber train`` and ``amber evaluate``: the RL commands of the ``amber`` CLI."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amber.cli.base import AmberCliError, cli, make_console, trust_option

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

__all__ = ["ALGOS", "PROGRESS_FIELDS", "evaluate", "train"]

ALGOS = {"PPO": "amber.PPOConfig", "DQN": "amber.DQNConfig", "SAC": "amber.SACConfig"}
PROGRESS_FIELDS = ("training_iteration", "num_env_steps_sampled_lifetime", "episode_return_mean",
                   "time_this_iter_s", "time_total_s", "checkpoint")


def _config_class(algo: str) -> Any:
    from amber.names import resolve

    try:
        return resolve(ALGOS[algo.upper()])
    except (KeyError, ImportError, AttributeError):
        raise AmberCliError(f"unknown or unavailable algorithm {algo!r}; choices: "
                            f"{', '.join(ALGOS)}") from None


def _build_algorithm(algo: str, env_id: str, format_: str | None, seed: int | None) -> Any:
    """Build the algorithm ``amber train`` runs; an unknown format or a bad env ends it with exit 2."""
    from amber.registry import get_registry

    if format_ is not None:
        get_registry().get(format_)
    config = _config_class(algo)().environment(env_id).debugging(seed=seed)
    if format_:
        config.checkpointing(format=format_)
    try:
        return config.build()
    except ValueError as e:
        raise AmberCliError(str(e)) from e


def _train_until(algorithm: Any, out: Path, table: Table, live: Live, *, stop_iters: int | None,
                 stop_reward: float | None, checkpoint_every: int) -> str:
    """Train until a stop criterion holds, writing ``out/progress.csv`` and a table row per iteration.

    :return: the path of the last checkpoint written (always one at the end).
    """
    last_ckpt = ""
    with open(out / "progress.csv", "w", newline="") as f, live:
        writer = csv.DictWriter(f, fieldnames=PROGRESS_FIELDS)
        writer.writeheader()
        while True:
            result = algorithm.train()
            it = result["training_iteration"]
            ret = result["episode_return_mean"]
            done = (stop_iters is not None and it >= stop_iters) or (
                stop_reward is not None and not math.isnan(ret) and ret >= stop_reward)
            ckpt = ""
            if done or (checkpoint_every and it % checkpoint_every == 0):
                ckpt = algorithm.save(out / f"checkpoint_{it:06d}").checkpoint.path
                last_ckpt = ckpt
            row = {k: result.get(k, "") for k in PROGRESS_FIELDS[:-1]} | {"checkpoint": ckpt}
            writer.writerow(row)
            f.flush()
            table.add_row(str(it), f"{result['num_env_steps_sampled_lifetime']:,}", f"{ret:.1f}",
                          f"{result['time_this_iter_s']:.2f}s", f"{result['time_total_s']:.1f}s",
                          Path(ckpt).name if ckpt else "")
            live.refresh()
            if done:
                return last_ckpt


@cli.command()
@click.option("--algo", default="PPO", show_default=True, help="PPO, DQN or SAC.")
@click.option("--env", "env_id", required=True, help="A gymnasium id or a registered env name.")
@click.option("--stop-reward", type=float, default=None, help="Stop when the mean return reaches this.")
@click.option("--stop-iters", type=int, default=None, help="Stop after this many iterations.")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="Where checkpoints and progress.csv go (default: the algorithm's log dir).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True,
              help="Also checkpoint every N iterations (0: only at the end).")
@click.option("--format", "format_", default=None, help="Checkpoint format (default: pickle).")
@click.option("--seed", type=int, default=None, help="Seed everything (runs become repeatable).")
def train(algo: str, env_id: str, stop_reward: float | None, stop_iters: int | None,
          checkpoint_dir: Path | None, checkpoint_every: int, format_: str | None, seed: int | None) -> None:
    """Train an algorithm with a live progress display; end with a checkpoint."""
    from rich.live import Live
    from rich.table import Table

    if stop_reward is None and stop_iters is None:
        raise AmberCliError("give --stop-iters and/or --stop-reward")
    algorithm = _build_algorithm(algo, env_id, format_, seed)
    out = Path(checkpoint_dir) if checkpoint_dir else Path(algorithm.logdir)
    out.mkdir(parents=True, exist_ok=True)
    console = make_console(stderr=True)
    table = Table("iter", "env steps", "return (mean of 100)", "iter time", "total time", "checkpoint",
                  title=f"{algo.upper()} on {env_id}")
    live = Live(table, console=console, transient=False, auto_refresh=False)
    last_ckpt = _train_until(algorithm, out, table, live, stop_iters=stop_iters, stop_reward=stop_reward,
                             checkpoint_every=checkpoint_every)
    algorithm.stop()
    click.echo(last_ckpt)


def _episode_return(algo: Any, env: Any, mapping: Any, *, seed: int, explore: bool) -> float:
    """Run one episode from ``env.reset(seed=seed)``; the sum of every agent's rewards."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    multi = isinstance(obs, dict)
    chosen: dict[Any, str] = {}
    total, done = 0.0, False
    while not done:
        if multi:
            actions = {}
            for agent, o in obs.items():
                if agent not in chosen:
                    chosen[agent] = mapping(agent, None, None) if mapping else "default_policy"
                pid = chosen[agent]
                actions[agent] = algo.policies[pid].compute_single_action(o, explore=explore)[0]
            obs, rew, term, trunc, _ = env.step(actions)
            total += float(sum(rew.values()))
            done = term.get("__all__", False) or trunc.get("__all__", False)
        else:
            action = algo.get_policy().compute_single_action(obs, explore=explore)[0]
            if hasattr(env.action_space, "low"):
                action = np.clip(action, env.action_space.low, env.action_space.high)
            obs, rew, term, trunc, _ = env.step(action)
            total += float(rew)
            done = term or trunc
    return total


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--episodes", type=int, default=10, show_default=True)
@click.option("--policy", "policy_id", default=None, help="Evaluate only this policy's agents' returns.")
@click.option("--explore/--greedy", default=False, show_default=True, help="Sample actions or act greedily.")
@click.option("--seed", type=int, default=0, show_default=True)
@trust_option
def evaluate(checkpoint: Path, episodes: int, policy_id: str | None, explore: bool, seed: int,
             allow_pickle: bool | None) -> None:
    """Run episodes with a checkpoint's policies; print the mean return."""
    import numpy as np

    from amber.algorithms.algorithm import Algorithm
    from amber.envs import make_env

    algo = Algorithm.from_checkpoint(checkpoint, policy_ids=[policy_id] if policy_id else None,
                                     policy_mapping_fn=(lambda *a, **k: policy_id) if policy_id else None,
                                     allow_pickle=allow_pickle)
    env = make_env(algo.config.env, algo.config.env_config)
    mapping = algo._mapping_fn()
    start = time.perf_counter()
    returns = [_episode_return(algo, env, mapping, seed=seed + ep, explore=explore) for ep in range(episodes)]
    algo.stop()
    click.echo(f"episodes: {episodes}  return mean: {np.mean(returns):.2f}  min: {np.min(returns):.2f}  "
               f"max: {np.max(returns):.2f}  ({time.perf_counter() - start:.1f}s)")

