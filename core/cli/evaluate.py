"""``amber evaluate``: run episodes with a checkpoint's policies.

An episode ends when the env ends it, or after ``--max-steps`` steps (:data:`MAX_STEPS` by
default): an env whose episodes never end (a checkpoint's ``env_config`` may say
``max_episode_steps=10**15``) cannot keep the command running; the summary says how many
episodes were cut so.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from amber.cli.base import LOCATION, AmberCliError, cli, trust_option
from amber.cli.env_errors import building_env, env_given_again, saved_env_hint

__all__ = ["MAX_STEPS", "evaluate"]

#: The default cap on an episode's steps: above the time limits of gymnasium's own envs (2,000 at
#: most) and Atari's v5 envs (27,000 steps); about 7 s of a small policy on one core.
MAX_STEPS = 100_000


def _policy_chooser(algo: Any, checkpoint: Path) -> Callable[[Any, bool, int], str]:
    """``choose(agent, multi_agent, episode) -> policy id``: the config's mapping function's choice
    (a single-agent env's agent is RLlib's ``"agent0"``), else ``"default_policy"`` or the one
    policy there is; for a single-agent env, where that policy does not exist, the one its agent
    played (:func:`~amber.envs.env_runner.single_agent_policy`; a mapping's answer so replaced is
    warned about, as training does).

    :raises AmberCliError: (when called) the choice is not a policy of the checkpoint.
    """
    from amber.envs.env_runner import SINGLE_AGENT_ID, Episode, only_policy, single_agent_policy
    from amber.envs.runner_slots import unused_mapping_warning
    from amber.envs.runner_state import mapping_caller
    from amber.errors import warn

    fn = algo.config.policy_mapping_fn
    call = None if fn is None else mapping_caller(fn, None)
    warned: list[bool] = []

    def choose(agent: Any, multi_agent: bool, episode: int) -> str:
        agent_id = agent if multi_agent else SINGLE_AGENT_ID
        pid = only_policy(algo.policies) if call is None else call(agent_id, Episode(episode, 0))
        kept = None if multi_agent else single_agent_policy(algo.policies)
        if pid not in algo.policies and kept is not None:
            if call is not None and not warned:
                warned.append(True)
                warn(unused_mapping_warning(fn, pid, kept))
            pid = kept
        if pid not in algo.policies:
            how = "without a policy_mapping_fn, amber maps" if call is None else "its policy_mapping_fn maps"
            raise AmberCliError(f"{checkpoint}: {how} agent {agent_id!r} to policy {pid!r}, which it does "
                                f"not hold (policies: {sorted(algo.policies)}); give --policy ID to play "
                                "every agent with one policy")
        return str(pid)

    return choose


def _episode_return(algo: Any, env: Any, choose: Callable[[Any, bool, int], str], *, seed: int,
                    explore: bool, max_steps: int) -> tuple[float, bool]:
    """Run one episode from ``env.reset(seed=seed)``, for at most ``max_steps`` steps; the sum of
    every agent's rewards, and whether the episode was cut at ``max_steps`` (the env had not ended it)."""
    import numpy as np

    obs, _ = env.reset(seed=seed)
    multi = isinstance(obs, dict)
    chosen: dict[Any, str] = {}
    total, done, steps = 0.0, False, 0
    while not done:
        if steps == max_steps:
            return total, True
        steps += 1
        if multi:
            actions = {}
            for agent, o in obs.items():
                if agent not in chosen:
                    chosen[agent] = choose(agent, True, seed)
                pid = chosen[agent]
                actions[agent] = algo.policies[pid].compute_single_action(o, explore=explore)[0]
            obs, rew, term, trunc, _ = env.step(actions)
            total += float(sum(rew.values()))
            done = term.get("__all__", False) or trunc.get("__all__", False)
            # an agent whose game ended gets its last observation, and no more actions
            obs = {a: o for a, o in obs.items() if not (term.get(a, False) or trunc.get(a, False))}
        else:
            if 0 not in chosen:
                chosen[0] = choose(0, False, seed)
            action = algo.policies[chosen[0]].compute_single_action(obs, explore=explore)[0]
            if hasattr(env.action_space, "low"):
                action = np.clip(action, env.action_space.low, env.action_space.high)
            obs, rew, term, trunc, _ = env.step(action)
            total += float(rew)
            done = term or trunc
    return total, False


def _mapping_fn_missing(checkpoint: Path, message: str) -> AmberCliError:
    """The error of a checkpoint whose policy_mapping_fn cannot be restored: saved without it (a
    placeholder), or saved by a registered name this process lacks (the message names it)."""
    if "saved without" not in message and "was not stored" not in message:
        return AmberCliError(f"{message}; or give --policy ID to play every agent with one policy")
    return AmberCliError(f"{checkpoint} was saved without its policy_mapping_fn, so which policy plays "
                         "which agent is not known: give --policy ID to play every agent with one policy")


@cli.command()
@click.argument("checkpoint", type=LOCATION)
@click.option("--episodes", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many episodes to run.")
@click.option("--env", "env_id", default=None, metavar="ENV_ID",
              help="The checkpoint's own env id, given again: its \"module:EnvId\" module is imported then.")
@click.option("--policy", "policy_id", default=None,
              help="Play every agent with this policy (only it is read); returns sum all agents' rewards.")
@click.option("--explore/--greedy", default=False, show_default=True, help="Sample actions or act greedily.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Episode i starts from env.reset(seed=SEED + i).")
@click.option("--max-steps", type=click.IntRange(min=1), default=MAX_STEPS, show_default=True,
              help="End an episode after this many steps if the env has not ended it (counted as cut).")
@trust_option
def evaluate(checkpoint: Path, episodes: int, env_id: str | None, policy_id: str | None, explore: bool,
             seed: int, max_steps: int, allow_pickle: bool | None) -> None:
    """Run episodes with a checkpoint's policies; print the mean return."""
    import numpy as np

    from amber.algorithms.algorithm import Algorithm
    from amber.envs import make_env
    from amber.errors import UnregisteredNameError

    env_id = env_given_again(checkpoint, env_id, allow_pickle)
    command, pickle = f"amber evaluate {shlex.quote(str(checkpoint))}", allow_pickle
    hint = saved_env_hint(checkpoint, allow_pickle, command)
    try:
        with building_env(f"cannot build {checkpoint}'s env"), hint:
            algo = Algorithm.from_checkpoint(
                checkpoint, policy_ids=[policy_id] if policy_id else None, env=env_id, allow_pickle=pickle,
                policy_mapping_fn=(lambda *a, **k: policy_id) if policy_id else None)
    except UnregisteredNameError as e:
        if "policy_mapping_fn" not in e.message:
            raise
        raise _mapping_fn_missing(checkpoint, e.message) from e
    with building_env(f"cannot build {checkpoint}'s env"):
        env = make_env(algo.config.env, algo.config.env_config)
    choose = _policy_chooser(algo, checkpoint)
    start = time.perf_counter()
    try:
        runs = [_episode_return(algo, env, choose, seed=seed + ep, explore=explore, max_steps=max_steps)
                for ep in range(episodes)]
    finally:
        algo.stop()
    returns, cut = [r for r, _ in runs], sum(c for _, c in runs)
    cut_note = f" ({cut} cut at --max-steps {max_steps})" if cut else ""
    took = time.perf_counter() - start
    click.echo(f"episodes: {episodes}{cut_note}  return mean: {np.mean(returns):.2f}  "
               f"min: {np.min(returns):.2f}  max: {np.max(returns):.2f}  ({took:.1f}s)")

