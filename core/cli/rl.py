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
``amber train`` at a time writes a run directory (it holds ``.amber-train.lock``), and a run
in remote storage (it holds a lease there: :mod:`amber.cli.run_lease`).
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from amber.cli.base import LOCATION, AmberCliError, LocalPath, checkpoint_place, cli, trust_option
from amber.cli.env_errors import building_env, env_given_again, saved_env_hint
from amber.cli.run_lease import check_unleased, remote_place, storage_lease
from amber.cli.train_loop import Interrupts, Report, Stop, check_unlocked, run_lock, standing, train_until

__all__ = ["ALGOS", "train"]

ALGOS = {"PPO": "amber.PPOConfig", "DQN": "amber.DQNConfig", "SAC": "amber.SACConfig"}
#: The options ``--resume`` refuses: the run's settings are the checkpoint's (``--env``: its own id).
_NOT_WITH_RESUME = {"algo": "--algo", "config_file": "--config", "overrides": "-o",
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
    """Build the algorithm ``amber train`` runs; a bad setting or env ends it with exit 2."""
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
    given = f" with env_config {config.env_config}" if config.env_config else ""
    try:
        with building_env(f"cannot build {algo} on {config.env!r}{given}"):  # (the env's errors)
            return config.build()
    except ValueError as e:
        raise AmberCliError(str(e)) from e
    except TypeError as e:  # the env's constructor refused env_config (--env-kwargs, env_config)
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
        found = [u for u in find_committed(run_dir) if u.rsplit("/", 1)[-1].startswith("checkpoint_")
                 and u != run_dir.rstrip("/")]
        return found[-1] if found else None
    for path in sorted(run_dir.glob("checkpoint_*"), reverse=True):
        if path.is_dir() and not is_temporary(path.name):
            try:
                read_manifest(path)
            except CheckpointError:
                continue
            return path
    return None


def _check_resume(ctx: click.Context, run_dir: Path | str, checkpoint_dir: Path | None) -> None:
    """Refuse, before anything is written (a lock file), a ``--resume`` that cannot go on: an option
    that would change the run's settings, no directory, a checkpoint (or inside one), no checkpoint
    to resume from (unless another ``amber train`` holds the run: that is what to say).

    :raises click.UsageError: an option that would change the run's settings was given.
    """
    from click.core import ParameterSource

    given = [flag for name, flag in _NOT_WITH_RESUME.items()
             if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"--resume continues the run with its saved settings; drop {', '.join(given)}")
    if isinstance(run_dir, Path) and not run_dir.is_dir():
        raise click.BadParameter(f"{run_dir} is not a directory", param_hint="--resume")
    where = checkpoint_place(run_dir) if isinstance(run_dir, Path) else remote_place(run_dir)
    if where is not None:
        parent = run_dir.parent if isinstance(run_dir, Path) else run_dir.rstrip("/").rsplit("/", 1)[0]
        hint = (f"it is a checkpoint itself: give its run's directory, --resume {parent}"
                if where == "a checkpoint" else f"it is {where}: give its run's directory")
        raise AmberCliError(f"{run_dir} holds no amber checkpoint (checkpoint_*) to resume from; {hint}")
    if checkpoint_dir is not None and (where := checkpoint_place(checkpoint_dir)) is not None:
        raise AmberCliError(f"{checkpoint_dir} is {where}: give --checkpoint-dir a directory of its own")
    if _newest_checkpoint(run_dir) is None:  # a run still in its first iteration: say who trains it
        if isinstance(run_dir, Path):
            check_unlocked(run_dir)
        else:
            check_unleased(run_dir)
        raise AmberCliError(f"{run_dir} holds no amber checkpoint (checkpoint_*) to resume from")


def _before_the_lock(ctx: click.Context, resume: Path | str | None, checkpoint_dir: Path | None,
                     storage: Path | str | None, format_: str | None, build: Callable[[], Any]) -> Any:
    """Check all that may refuse the run before anything is written (a lock file, a lease): the
    format, and ``--resume``'s run, or a new run's directory, algorithm (``build()``, returned;
    None: resumed) and ``--storage`` destination (checked again once held)."""
    if format_ is not None:
        from amber.registry import get_registry

        get_registry().get(format_)  # (UnknownFormatError: exit 2, listing the names)
    if resume is not None:
        _check_resume(ctx, resume, checkpoint_dir)
        return None
    if checkpoint_dir is not None:
        _check_new_run(checkpoint_dir)
    algorithm = build()
    if storage is not None:
        _check_new_run(_locations(algorithm, checkpoint_dir, storage, None)[1], "--storage")
    return algorithm


def _resume(run_dir: Path | str, allow_pickle: bool | None, env_id: str | None) -> Any:
    """The algorithm restored from ``run_dir``'s newest checkpoint (weights, optimizers, RNGs,
    env state and counters); ``env_id``: its env id given again (``--env``)."""
    path = _newest_checkpoint(run_dir)
    if path is None:
        raise AmberCliError(f"{run_dir} holds no amber checkpoint (checkpoint_*) to resume from")
    from amber.algorithms.algorithm import Algorithm

    env = env_given_again(path, env_id, allow_pickle)
    command = f"amber train --resume {shlex.quote(str(run_dir))} ..."
    with building_env(f"cannot resume {path}"), saved_env_hint(path, allow_pickle, command):
        return Algorithm.from_checkpoint(path, allow_pickle=allow_pickle, env=env)


def _run(algorithm: Any, out: Path, store: Path | str, *, append: bool, stop: Stop,
         checkpoint_every: int, num_to_keep: int | None, format_: str | None, as_json: bool,
         interrupts: Interrupts) -> tuple[str, int | None]:
    """Train ``algorithm`` with its learning curves in ``out`` (appended to with ``append``,
    else started afresh) and its checkpoints in ``store`` (``out``, or a URL), kept as its
    config's retention says (``.checkpointing(num_to_keep=..., checkpoint_score_attribute=...)``),
    ``num_to_keep`` and ``format_`` (not None) set there first: each checkpoint records them, so a
    resume keeps them."""
    from amber.algorithms.result_log import PROGRESS_CSV, RESULT_JSON, copy_logs, copy_logs_to, resume_logs
    from amber.checkpoint_manager import CheckpointManager
    from amber.cli.train_loop import record_settings

    algorithm.logdir = out
    if not append:
        for name in (PROGRESS_CSV, RESULT_JSON):
            (out / name).unlink(missing_ok=True)
    elif isinstance(store, str):  # the local curves or those beside the checkpoints: the fuller
        resume_logs(store, out, algorithm.iteration)
    c = algorithm.config
    record_settings(c, num_to_keep=num_to_keep, format_=format_)  # (a resume's too: checkpoints record them)
    manager = CheckpointManager(store, c.num_to_keep, c.checkpoint_score_attribute, c.checkpoint_score_order)
    mode = "json" if as_json else "live" if sys.stdout.isatty() else "plain"
    env = algorithm.config.env
    title = f"{type(algorithm).__name__} on {env if isinstance(env, str) else getattr(env, '__name__', env)}"
    after_save = None  # --storage: the curves beside the checkpoints too
    if isinstance(store, str):
        after_save = lambda ckpt: copy_logs(out, ckpt)  # noqa: E731
    elif Path(store).absolute() != out.absolute():
        after_save = lambda _: copy_logs_to(out, store)  # noqa: E731
    with Report(mode, title) as report:
        return train_until(algorithm, manager, report, interrupts, stop=stop,
                           checkpoint_every=checkpoint_every, format_=format_, after_save=after_save)


def _locations(algorithm: Any, checkpoint_dir: Path | None, storage: Path | str | None,
               resume: Path | str | None) -> tuple[Path, Path | str]:
    """Where a run's learning curves go (a local directory) and where its checkpoints go (that
    directory, ``<storage>/<its name>``, or the URL of a remote run being resumed)."""
    if isinstance(resume, str):  # a run in remote storage: continued there, logged locally
        return checkpoint_dir or Path(algorithm.logdir), resume
    out = checkpoint_dir or resume or Path(algorithm.logdir)
    return out, _store_of(out, storage)


def _store_of(out: Path, storage: Path | str | None) -> Path | str:
    """Where the checkpoints of the run logged in ``out`` go: ``<storage>/<out's name>``, or ``out``."""
    if storage is None:
        return out
    from amber.storage import join

    return join(storage, out.absolute().resolve().name)  # the name of "." or "..", not the dots


def _known_store(resume: Path | str | None, checkpoint_dir: Path | None,
                 storage: Path | str | None) -> Path | str | None:
    """The run's checkpoint storage when it is known before the algorithm is (None: its own log
    dir's, or a storage named after a new log dir)."""
    if isinstance(resume, str):
        return resume
    out = checkpoint_dir or resume
    return None if out is None or storage is None else _store_of(out, storage)


def _run_directory(resume: Path | str | None, checkpoint_dir: Path | None) -> Path | None:
    """The local run directory that one ``amber train`` at a time may write: the one resumed, or
    the one given (None: a new log dir of its own, or a remote run logged to a new one)."""
    return resume if resume is not None and not isinstance(resume, str) else checkpoint_dir


@contextlib.contextmanager
def _holding(store: Path | str | None, run_dir: Path | None, *, new: bool) -> Iterator[None]:
    """Hold the run's checkpoint storage ``store`` for the block, when it is not ``run_dir`` (held
    already): a local directory's lock, or a remote run's lease (:mod:`amber.cli.run_lease`);
    for a ``new`` run, then check that no other run's checkpoints are there."""
    if isinstance(store, str):
        held: Any = storage_lease(store)
    elif store is not None and (run_dir is None or store.resolve() != run_dir.resolve()):
        held = run_lock(store)
    else:
        held, store = contextlib.nullcontext(), None
    with held:
        if new and store is not None:  # (held: no other run can start writing there now)
            _check_new_run(store, "--storage")
        yield


def _check_new_run(out: Path | str, option: str = "--checkpoint-dir") -> None:
    """Refuse to start a run whose checkpoints would go to a directory (or URL: ``--storage``)
    that holds another's checkpoints (they would mix, and its retention would delete them) or that
    is, or lies in, a checkpoint."""
    if isinstance(out, str):
        from amber.storage import Remote

        where = remote_place(out)
        runs = [] if where else [n for n in Remote(out).children() if n.startswith("checkpoint_")]
    else:
        where = checkpoint_place(out)
        runs = sorted(p.name for p in out.glob("checkpoint_*")) if out.is_dir() and not where else []
    given = "--checkpoint-dir" if option == "--checkpoint-dir" else "--checkpoint-dir name or --storage"
    if where is not None:
        raise AmberCliError(f"{out} is {where}: give {option} a directory of its own")
    if runs:
        again = f"amber train --resume {shlex.quote(str(out))} ..."
        raise AmberCliError(f"{out} already holds a run's checkpoints ({', '.join(runs[-3:])}): continue "
                            f"that run with `{again}`, or give a new {given}")


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


def _stop(iters: int | None, timesteps: int | None, reward: float | None) -> Stop:
    """The stop criteria; at least one is needed."""
    if iters is None and timesteps is None and reward is None:
        raise AmberCliError("give --stop-iters, --stop-timesteps and/or --stop-reward")
    return Stop(iters, timesteps, reward)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):  # a mean return never reaches nan or inf
        raise click.BadParameter(f"must be a finite number, not {value}")
    return value


def _storage_instead(url: str) -> str:
    """How to put a run's checkpoints at ``url``: ``--storage`` with its parent, the name local."""
    parent, _, name = url.rstrip("/").rpartition("/")
    return f"give --storage {shlex.quote(parent)} --checkpoint-dir {shlex.quote(name)} for checkpoints there"


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
@click.option("--env", "env_id", default=None,
              help="A gymnasium id or a registered env name (with --resume: the run's own, given again).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="A JSON or YAML file of settings.")
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set one setting (after --config); dotted keys reach into dicts; "
                   "VALUE is JSON, else a string.")
@click.option("--env-kwargs", callback=_json_object, default=None, metavar="JSON",
              help="A JSON object passed to the env as env_config.")
@click.option("--stop-iters", type=click.IntRange(min=1), help="Stop at this training iteration.")
@click.option("--stop-timesteps", type=click.IntRange(min=1), help="Stop after this many env steps.")
@click.option("--stop-reward", type=float, default=None, callback=_finite,
              help="Stop when the mean return reaches this.")
@click.option("--checkpoint-dir", type=LocalPath(_storage_instead), default=None,
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
    stop = _stop(stop_iters, stop_timesteps, stop_reward)
    algorithm = _before_the_lock(ctx, resume, checkpoint_dir, storage, format_, lambda: _build_algorithm(
        algo, env_id, format_, seed, env_kwargs=env_kwargs, settings=_user_settings(config_file, overrides)))
    run_dir, known = _run_directory(resume, checkpoint_dir), _known_store(resume, checkpoint_dir, storage)
    with Interrupts() as interrupts, run_lock(run_dir), _holding(known, run_dir, new=resume is None):
        if resume is not None:
            algorithm = _resume(resume, allow_pickle, env_id)
        out, store = _locations(algorithm, checkpoint_dir, storage, resume)
        with _holding(store if known is None and storage is not None else None, run_dir, new=resume is None):
            last_ckpt, signum = _run(algorithm, Path(out), store, append=resume is not None, stop=stop,
                                     checkpoint_every=checkpoint_every, num_to_keep=num_to_keep,
                                     format_=format_, as_json=as_json, interrupts=interrupts)
        algorithm.stop()
    _say_where_it_ended(algorithm, stop, last_ckpt, signum, as_json)
    if signum is not None:
        ctx.exit(128 + signum)
