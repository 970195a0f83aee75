"""``amber train``: train an algorithm from the command line, as RL Zoo and ``rllib train`` do.

Settings come from the algorithm's defaults, then ``--config FILE`` (JSON or YAML),
then each ``-o key=value`` (dotted keys reach into nested dicts), then the dedicated
flags (``--env``, ``--env-kwargs``, ``--seed``, ``--format``). Checkpoints go through an
:class:`amber.CheckpointManager` on the checkpoint directory (``--num-to-keep``), which
becomes the algorithm's log dir, so its learning curves (``progress.csv``, ``result.json``:
:mod:`amber.algorithms.result_log`) go there too; ``--resume RUN_DIR`` continues a run
from its newest checkpoint exactly as if it had never stopped. SIGINT and SIGTERM end
the run after the current iteration with a final checkpoint, exit 130 and 143 (SIGHUP too,
129, unless it is ignored, as under nohup); so does a closed standard output (141). One
``amber train`` at a time writes a run directory (it holds ``.amber-train.lock``).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from amber.cli.base import LOCATION, AmberCliError, checkpoint_place, cli, trust_option
from amber.cli.train_loop import Interrupts, Report, Stop, run_lock, standing, train_until

__all__ = ["ALGOS", "train"]

ALGOS = {"PPO": "amber.PPOConfig", "DQN": "amber.DQNConfig", "SAC": "amber.SACConfig"}
#: The options ``--resume`` refuses: the run's settings are the checkpoint's.
_NOT_WITH_RESUME = {"algo": "--algo", "env_id": "--env", "config_file": "--config", "overrides": "-o",
                    "env_kwargs": "--env-kwargs", "seed": "--seed"}


# -- settings ----------------------------------------------------------------------------------------

def _config_class(algo: str) -> Any:
    from amber.names import resolve

    try:
        return resolve(ALGOS[algo.upper()])
    except (KeyError, ImportError, AttributeError):
        raise AmberCliError(f"unknown or unavailable algorithm {algo!r}; choices: "
                            f"{', '.join(ALGOS)}") from None


def _user_settings(config_file: Path | None, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The settings of ``--config`` with each ``-o`` applied after it."""
    from amber.algorithms.config_overrides import merge_settings, read_settings_file

    try:
        settings = read_settings_file(config_file) if config_file is not None else {}
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--config'") from e
    try:
        return merge_settings(settings, overrides)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'-o'") from e


def _build_algorithm(algo: str, env_id: str | None, format_: str | None, seed: int | None, *,
                     settings: dict[str, Any] | None = None,
                     env_kwargs: dict[str, Any] | None = None) -> Any:
    """Build the algorithm ``amber train`` runs; an unknown format or a bad env ends it with exit 2."""
    from amber.registry import get_registry

    if format_ is not None:
        get_registry().get(format_)
    from amber.algorithms.config_overrides import configure

    try:
        config = configure(_config_class(algo), settings or {})
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--config' / '-o'") from e
    if env_id is not None:
        config.environment(env_id)
    if env_kwargs is not None:
        config.environment(env_config=env_kwargs)
    if seed is not None:
        config.debugging(seed=seed)
    if format_:
        config.checkpointing(format=format_)
    if config.env is None:
        raise AmberCliError("give --env (or an env setting in --config)")
    try:
        return config.build()
    except ValueError as e:
        raise AmberCliError(str(e)) from e
    except TypeError as e:  # the env's constructor refused env_config (--env-kwargs, env_config)
        given = f" with env_config {config.env_config}" if config.env_config else ""
        raise AmberCliError(f"cannot build {algo} on {config.env!r}{given}: {e}") from e


# -- resuming ----------------------------------------------------------------------------------------

def _newest_checkpoint(run_dir: Path | str) -> Path | str | None:
    """The newest checkpoint of a run: the newest managed one, else the last ``checkpoint_*``
    directory (by name) that holds an amber manifest (in remote storage: a committed one)."""
    from amber.atomic import is_temporary
    from amber.checkpoint_manager import CheckpointManager
    from amber.errors import CheckpointError
    from amber.layout import read_manifest
    from amber.storage import find_committed

    latest = CheckpointManager(run_dir).latest()
    if latest is not None:
        return latest.path
    if isinstance(run_dir, str):
        found = [u for u in find_committed(run_dir) if u.rsplit("/", 1)[-1].startswith("checkpoint_")]
        return found[-1] if found else None
    for path in sorted(run_dir.glob("checkpoint_*"), reverse=True):
        if path.is_dir() and not is_temporary(path.name):
            try:
                read_manifest(path)
            except CheckpointError:
                continue
            return path
    return None


def _resume(ctx: click.Context, run_dir: Path | str, allow_pickle: bool | None) -> Any:
    """The algorithm restored from ``run_dir``'s newest checkpoint (weights, optimizers, RNGs,
    env state and counters).

    :raises click.UsageError: an option that would change the run's settings was given.
    """
    from click.core import ParameterSource

    given = [flag for name, flag in _NOT_WITH_RESUME.items()
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"--resume continues the run with its saved settings; drop {', '.join(given)}")
    if isinstance(run_dir, Path) and not run_dir.is_dir():
        raise click.BadParameter(f"{run_dir} is not a directory", param_hint="--resume")
    path = _newest_checkpoint(run_dir)
    if path is None:
        hint = (f"; it is a checkpoint itself: give its run's directory, --resume {run_dir.parent}"
                if isinstance(run_dir, Path) and (run_dir / "checkpoint.json").is_file() else "")
        raise AmberCliError(f"{run_dir} holds no amber checkpoint (checkpoint_*) to resume from{hint}")
    from amber.algorithms.algorithm import Algorithm

    return Algorithm.from_checkpoint(path, allow_pickle=allow_pickle)


def _run(algorithm: Any, out: Path, store: Path | str, *, append: bool, stop: Stop,
         checkpoint_every: int, num_to_keep: int | None, format_: str | None, as_json: bool,
         interrupts: Interrupts) -> tuple[str, int | None]:
    """Train ``algorithm`` with its learning curves in ``out`` (appended to with ``append``,
    else started afresh) and its checkpoints in ``store`` (``out``, or a URL), kept as its
    config's retention says (``.checkpointing(num_to_keep=..., checkpoint_score_attribute=...)``),
    ``num_to_keep`` (not None) set there first: each checkpoint records it, so a resume keeps it."""
    from amber.algorithms.result_log import PROGRESS_CSV, RESULT_JSON, copy_logs_to, fetch_logs
    from amber.checkpoint_manager import CheckpointManager

    algorithm.logdir = out
    if not append:
        for name in (PROGRESS_CSV, RESULT_JSON):
            (out / name).unlink(missing_ok=True)
    elif isinstance(store, str) and not (out / PROGRESS_CSV).exists():
        fetch_logs(store, out)  # resumed from storage on another machine: continue its curves
    c = algorithm.config
    if num_to_keep is not None:
        c.checkpointing(num_to_keep=num_to_keep)
    manager = CheckpointManager(store, c.num_to_keep, c.checkpoint_score_attribute, c.checkpoint_score_order)
    mode = "json" if as_json else "live" if sys.stdout.isatty() else "plain"
    env = algorithm.config.env
    title = f"{type(algorithm).__name__} on {env if isinstance(env, str) else getattr(env, '__name__', env)}"
    with Report(mode, title) as report:
        local_store = not isinstance(store, str) and Path(store).absolute() != out.absolute()
        return train_until(algorithm, manager, report, interrupts, stop=stop,  # --storage DIR: the
                            checkpoint_every=checkpoint_every, format_=format_,  # curves beside too
                            after_save=(lambda _: copy_logs_to(out, store)) if local_store else None)


def _locations(algorithm: Any, checkpoint_dir: Path | None, storage: Path | str | None,
               resume: Path | str | None) -> tuple[Path, Path | str]:
    """Where a run's learning curves go (a local directory) and where its checkpoints go (that
    directory, ``<storage>/<its name>``, or the URL of a remote run being resumed)."""
    if isinstance(resume, str):  # a run in remote storage: continued there, logged locally
        return checkpoint_dir or Path(algorithm.logdir), resume
    out = checkpoint_dir or resume or Path(algorithm.logdir)
    if storage is None:
        return out, out
    from amber.storage import join

    return out, join(storage, out.absolute().resolve().name)  # the name of "." or "..", not the dots


def _run_directory(resume: Path | str | None, checkpoint_dir: Path | None) -> Path | None:
    """The local run directory that one ``amber train`` at a time may write: the one resumed, or
    the one given (None: a new log dir of its own, or a remote run logged to a new one)."""
    return resume if resume is not None and not isinstance(resume, str) else checkpoint_dir


def _check_new_run(out: Path) -> None:
    """Refuse to start a run in a directory that holds another's checkpoints (they would mix,
    and its retention would delete them) or that is, or lies in, a checkpoint."""

    where = checkpoint_place(out)
    if where is not None:
        raise AmberCliError(f"{out} is {where}: give --checkpoint-dir a directory of its own")
    runs = sorted(p.name for p in out.glob("checkpoint_*")) if out.is_dir() else []
    if runs:
        raise AmberCliError(f"{out} already holds a run's checkpoints ({', '.join(runs[-3:])}): continue "
                            f"that run with `amber train --resume {out} ...`, or give a new --checkpoint-dir")


def _say_where_it_ended(algorithm: Any, stop: Stop, last_ckpt: str, signum: int | None,
                        as_json: bool) -> None:
    """Print the run's last checkpoint (its last line), or why nothing was trained."""
    if last_ckpt and not as_json:
        click.echo(last_ckpt)
    elif not last_ckpt and signum is None:  # the stop held before any iteration (a resumed run's)
        met = "; ".join(stop.met(*standing(algorithm)))
        click.echo(f"amber: nothing to train: the run is at iteration {algorithm.iteration}, which already "
                   f"meets its stop condition ({met}); no checkpoint written. Give a later stop to go on",
                   err=True)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # a mean return never reaches nan or inf
        raise click.BadParameter(f"must be a finite number, not {value}")
    return value


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"max_episode_steps\": 200}'")
    return data


@cli.command()
@click.option("--algo", default="PPO", show_default=True, help="PPO, DQN or SAC.")
@click.option("--env", "env_id", default=None, help="A gymnasium id or a registered env name.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A JSON or YAML file of settings (YAML needs PyYAML).")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set one setting (after --config); dotted keys reach into dicts; "
                   "VALUE is JSON, else a string.")
@click.option("--env-kwargs", callback=_json_object, default=None, metavar="JSON",
              help="A JSON object passed to the env as env_config.")
@click.option("--stop-iters", type=click.IntRange(min=1), help="Stop at this training iteration.")
@click.option("--stop-timesteps", type=click.IntRange(min=1), help="Stop after this many env steps.")
@click.option("--stop-reward", type=float, default=None, callback=_finite,
              help="Stop when the mean return reaches this.")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="Where checkpoints and progress.csv go (default: the algorithm's log dir; "
                   "with --resume: RUN_DIR).")
@click.option("--storage", type=LOCATION, default=None, metavar="URL",
              help="Put the checkpoints under URL/<run dir name> (an fsspec URL such as s3://bucket/runs, "
                   "configured as fsspec is), with copies of progress.csv and result.json.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also checkpoint every N iterations (0: only at the end).")
@click.option("--num-to-keep", type=click.IntRange(min=1), default=None,
              help="Keep N checkpoints: the newest (with the config's checkpoint_score_attribute, the "
                   "best and the newest); saved with them, so --resume keeps it (default: the config's).")
@click.option("--format", "format_", default=None, help="Checkpoint format (default: pickle).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed everything (runs become repeatable).")
@click.option("--resume", type=LOCATION, default=None, metavar="RUN_DIR",
              help="Continue the run in RUN_DIR (a directory, or a --storage run's URL) from its "
                   "newest checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per iteration.")
@trust_option
@click.pass_context
def train(ctx: click.Context, algo: str, env_id: str | None, config_file: Path | None,
          overrides: tuple[str, ...], env_kwargs: dict[str, Any] | None, stop_iters: int | None,
          stop_timesteps: int | None, stop_reward: float | None, checkpoint_dir: Path | None,
          storage: Path | str | None, checkpoint_every: int, num_to_keep: int | None,
          format_: str | None, seed: int | None, resume: Path | str | None, as_json: bool,
          allow_pickle: bool | None) -> None:
    """Train an algorithm, one line per iteration; end with a checkpoint (printed last).

    Ctrl-C or SIGTERM stops after the current iteration with a checkpoint (exit 130 / 143).
    """
    stop = Stop(stop_iters, stop_timesteps, stop_reward)
    if stop == Stop(None, None, None):
        raise AmberCliError("give --stop-iters, --stop-timesteps and/or --stop-reward")
    if resume is None and checkpoint_dir is not None:
        _check_new_run(checkpoint_dir)  # before the work of building the algorithm
    with Interrupts() as interrupts, run_lock(_run_directory(resume, checkpoint_dir)):
        algorithm = _resume(ctx, resume, allow_pickle) if resume is not None else _build_algorithm(
            algo, env_id, format_, seed, env_kwargs=env_kwargs,
            settings=_user_settings(config_file, overrides))
        out, store = _locations(algorithm, checkpoint_dir, storage, resume)
        last_ckpt, signum = _run(algorithm, Path(out), store, append=resume is not None, stop=stop,
                                 checkpoint_every=checkpoint_every, num_to_keep=num_to_keep,
                                 format_=format_, as_json=as_json, interrupts=interrupts)
        algorithm.stop()
    _say_where_it_ended(algorithm, stop, last_ckpt, signum, as_json)
    if signum is not None:
        ctx.exit(128 + signum)
