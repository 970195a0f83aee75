"""An algorithm's checkpoints: ``save``, ``restore`` and ``from_checkpoint`` (RLlib's API).

:class:`CheckpointMixin` gives :class:`~amber.algorithms.algorithm.Algorithm`
these methods; the state they write and read is the algorithm's
``get_state()`` (its class, config and declared components) and its
policies' states, through :mod:`amber.checkpoint`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Literal, overload

from amber.algorithms import saved_config
from amber.algorithms.model_exports import model_exports
from amber.algorithms.saved_config import GIVEN_AGAIN, check_same_kind, config_from_state
from amber.errors import CheckpointError, state_errors
from amber.storage import is_remote, local_path

if TYPE_CHECKING:
    import pluggy

    from amber.algorithms.algorithm_config import AlgorithmConfig
    from amber.algorithms.callbacks import DefaultCallbacks
    from amber.algorithms.result_log import ResultLogger
    from amber.async_save import SaveHandle
    from amber.checkpoint_manager import CheckpointManager
    from amber.checkpoint_write import Attachment
    from amber.policy.policy import Policy

__all__ = ["CheckpointMixin", "SaveResult", "TrainingCheckpoint", "config_from_state", "results_dir"]


@dataclass(frozen=True)
class TrainingCheckpoint:
    """Where a save wrote its checkpoint; a path-like object (``os.fspath`` gives :attr:`path`), so
    every loader takes it as it takes the path (``Algorithm.from_checkpoint(result.checkpoint)``)."""

    path: str

    def to_directory(self) -> str:
        """The checkpoint directory."""
        return self.path

    def __fspath__(self) -> str:
        return self.path


@dataclass(frozen=True)
class SaveResult:
    """:meth:`Algorithm.save`'s result: ``checkpoint.path``, the directory; ``metrics``, the last result's."""

    checkpoint: TrainingCheckpoint
    metrics: dict[str, Any] = field(default_factory=dict)


def results_dir() -> Path:
    """Where algorithms keep their logs and default checkpoints (``AMBER_RESULTS_DIR``)."""
    return Path(os.environ.get("AMBER_RESULTS_DIR") or Path.home() / "amber_results")


class CheckpointMixin:
    """The checkpoint methods of an algorithm."""

    config: AlgorithmConfig
    pm: pluggy.PluginManager
    policies: dict[str, Policy]
    iteration: int
    _logdir: Path | None
    _last_result: dict[str, Any] | None
    callbacks: DefaultCallbacks
    results_logger: ResultLogger

    if TYPE_CHECKING:  # the algorithm's own (Algorithm.get_state, Algorithm.set_state)
        def get_state(self) -> dict[str, Any]: ...

        def set_state(self, state: Mapping[str, Any], *, restore_episodes: bool = True,
                      rollback: bool = True) -> None: ...

        def _sources_to_keep(self, path: str | os.PathLike[str]) -> list[str | os.PathLike[str]]: ...

    @property
    def logdir(self) -> str:
        """This algorithm's directory for default checkpoints (made on first use)."""
        if self._logdir is None:
            env = self.config.env
            env = env if isinstance(env, str) else getattr(env, "__name__", "env")
            stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            root = results_dir()
            root.mkdir(parents=True, exist_ok=True)
            self._logdir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__}_{env}_{stamp}_", dir=root))
        return str(self._logdir)

    @logdir.setter
    def logdir(self, path: str | os.PathLike[str]) -> None:
        """Use the local directory ``path`` (made if missing; a ``file://`` URL is its path) for
        default checkpoints and learning curves.

        :raises ValueError: a remote URL (``s3://``, ``memory://``...): the logdir is local; save
            checkpoints there with ``.checkpointing(storage_path=URL)``.
        """
        if is_remote(path):
            raise ValueError(f"logdir {os.fspath(path)!r} is a URL; the logdir is a local directory. "
                             "To save checkpoints at a URL, use .checkpointing(storage_path=...) "
                             "(or algo.save(URL))")
        local = local_path(path)
        local.mkdir(parents=True, exist_ok=True)
        self._logdir = local

    @overload
    def save(self, checkpoint_dir: str | os.PathLike[str] | None = ..., *, format: str | None = ...,
             block: Literal[True] = ..., _metadata: Mapping[str, str] | None = ...,
             storage_options: Mapping[str, Any] | None = ...) -> SaveResult: ...

    @overload
    def save(self, checkpoint_dir: str | os.PathLike[str] | None = ..., *, format: str | None = ...,
             block: Literal[False], _metadata: Mapping[str, str] | None = ...,
             storage_options: Mapping[str, Any] | None = ...) -> SaveHandle[SaveResult]: ...

    def save(
        self, checkpoint_dir: str | os.PathLike[str] | None = None, *, format: str | None = None,
        block: bool = True, _metadata: Mapping[str, str] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> SaveResult | SaveHandle[SaveResult]:
        """Write a checkpoint of the whole algorithm (atomically); return where, and RLlib's metrics.

        A background save in flight is waited for first, and an error of it that
        nobody retrieved is raised here (:mod:`amber.async_save`).

        :param checkpoint_dir: the directory or fsspec URL; default: ``checkpoint_<iteration>``
            under :meth:`checkpoint_root` (``.checkpointing(storage_path=...)``, else :attr:`logdir`).
        :param format: a registered format (default: ``.checkpointing(format=...)``, "pickle").
        :param block: False: take a snapshot of the state now (training may go on once this returns),
            write it in the background, return a :class:`~amber.async_save.SaveHandle` of the SaveResult.
        :param _metadata: extra manifest metadata (:class:`amber.CheckpointManager`'s).
        :param storage_options: for a URL, its fsspec options (default: ``.checkpointing``'s).
        :raises UnknownFormatError: no such format (raised here even with ``block=False``).

        With no directory and retention configured (``.checkpointing(num_to_keep=...)``), older
        checkpoints are pruned once this one is committed (:class:`amber.CheckpointManager`).
        """
        from amber.async_save import save_in_background, wait_for_saves
        from amber.checkpoint import format_for

        fmt = format or self.config.checkpoint_format
        path = self._save_path(checkpoint_dir)
        format_for(fmt, path, pm=self.pm)  # an unknown format fails before anything is captured
        manager = self._retention() if checkpoint_dir is None else None
        metadata = {"algorithm": type(self).__name__, **(_metadata or {})}
        if manager is not None:
            metadata.update(manager.metadata_for(self))
        options = storage_options if storage_options is not None else self.config.storage_options
        metrics = {**(self._last_result or {}), "training_iteration": self.iteration}  # the last train()'s
        result = SaveResult(TrainingCheckpoint(str(path)), metrics)
        keep = self._sources_to_keep(path)  # (restored in part from one: warned once)
        prune = (lambda: manager.prune(saved=path, keep=keep)) if manager is not None else (lambda: [])
        if block:
            wait_for_saves()
            from amber.policy.policy_helpers import state_views

            with state_views():  # written before anything can change them: views, no copies
                state = self.get_state()
            self._write_checkpoint(path, fmt, state, model_exports(self, frozen=False), metadata, options)
            prune()  # only once the new checkpoint is committed
            self._checkpoint_done(path, result.metrics["training_iteration"], options)
            return result

        def capture() -> Callable[[], SaveResult]:  # in this thread: the snapshot
            state, exports = self._snapshot(path), model_exports(self, frozen=True)

            def write() -> SaveResult:  # in the background
                self._write_checkpoint(path, fmt, state, exports, metadata, options)
                prune()
                self._checkpoint_done(path, result.metrics["training_iteration"], options)
                return result

            return write

        return save_in_background(capture, path)

    def _save_path(self, checkpoint_dir: str | os.PathLike[str] | None) -> str | Path:
        """Where a save goes: ``checkpoint_dir`` (a URL kept as it is), else the default one."""
        from amber.storage import join, local_path

        if checkpoint_dir is None:
            return join(self.checkpoint_root(), f"checkpoint_{self.iteration:06d}")
        return os.fspath(checkpoint_dir) if is_remote(checkpoint_dir) else local_path(checkpoint_dir)

    def checkpoint_root(self) -> str | Path:
        """Where ``save()`` puts checkpoints: ``<storage_path>/<log dir name>``, or :attr:`logdir`."""
        from amber.storage import join

        storage = self.config.storage_path
        return Path(self.logdir) if storage is None else join(storage, Path(self.logdir).name)

    def _checkpoint_done(self, path: str | Path, iteration: int, options: Mapping[str, Any] | None) -> None:
        """After a commit: ``progress.csv``'s checkpoint column, the callbacks. The learning curves
        are copied beside a run's checkpoints at a URL (those under :meth:`checkpoint_root` with a
        ``storage_path``), never beside a checkpoint saved elsewhere (``algo.save(URL)``)."""
        self.results_logger.checkpoint_written(path, iteration)
        beside = os.fspath(path).rstrip("/").rsplit("/", 1)[0]  # (a run's: its checkpoint root)
        if is_remote(path) and self.config.storage_path and beside == os.fspath(self.checkpoint_root()):
            from amber.algorithms.result_log import copy_logs

            copy_logs(self.logdir, os.fspath(path), options)
        self.callbacks.on_checkpoint(algorithm=self, checkpoint_path=str(path))

    def _snapshot(self, path: Path) -> dict[str, Any]:
        """:meth:`get_state`, independent of the live algorithm: taken as views of the live
        arrays (:func:`~amber.policy.policy_helpers.state_views`), each copied once (a policy that
        ignores ``state_views`` hands out copies, which are copied again). In a background save,
        the views of weights and optimizer moments are copied by its writer (:mod:`amber.snapshots`)."""
        from amber.policy.policy_helpers import state_views
        from amber.snapshots import recording_live_views, snapshot

        with state_views(), recording_live_views() as live:
            state = self.get_state()
        return snapshot(state, where=path, live=live)

    def _retention(self) -> CheckpointManager | None:
        """The manager of default checkpoints when retention is configured, else None."""
        c = self.config
        if c.num_to_keep is None and c.checkpoint_score_attribute is None:
            return None
        from amber.checkpoint_manager import CheckpointManager

        return CheckpointManager(self.checkpoint_root(), c.num_to_keep, c.checkpoint_score_attribute,
                                 c.checkpoint_score_order, storage_options=c.storage_options)

    def _write_checkpoint(self, path: str | Path, fmt: str, state: Mapping[str, Any],
                          attachments: Mapping[str, Attachment], metadata: Mapping[str, str],
                          storage_options: Mapping[str, Any] | None) -> None:
        from amber.checkpoint import write_checkpoint

        # In a portable format, a mapping function (or env class) with no registered name is
        # written as a placeholder, and from_checkpoint asks for it.
        write_checkpoint(path, type="Algorithm", state=state["algorithm"], policies=state["policies"],
                         format=fmt, metadata=metadata, attachments=attachments,
                         placeholders=set(GIVEN_AGAIN), pm=self.pm, storage_options=storage_options)

    def restore(self, checkpoint_path: str | os.PathLike[str] | Any, *, allow_pickle: bool | None = None,
                storage_options: Mapping[str, Any] | None = None) -> None:
        """Set the whole state from a checkpoint (a directory or URL, or a Ray Tune/Train
        ``Checkpoint``: :func:`checkpoint_location`); on error nothing changes."""
        from amber.checkpoint import read_checkpoint

        checkpoint_path = checkpoint_location(checkpoint_path)
        options = storage_options if storage_options is not None else self.config.storage_options
        ckpt = read_checkpoint(checkpoint_path, allow_pickle=allow_pickle, pm=self.pm,
                               storage_options=options)
        if ckpt.type != "Algorithm":
            raise CheckpointError(f"{checkpoint_path} is a {ckpt.type} checkpoint, not an Algorithm one",
                                  path=checkpoint_path)
        check_same_kind(type(self), ckpt.state, checkpoint_path, self.pm)
        policies = {pid: p.state for pid, p in ckpt.policies.items()}
        saved_config.check_policy_networks(self, ckpt.state, policies, checkpoint_path)
        from amber.envs.ray_runners import restoring_from, runner_deaths_pass
        from amber.models.build_budget import adopting_state

        # set_state has put everything back by then; the state read is this restore's to keep
        with runner_deaths_pass(), state_errors(checkpoint_path), adopting_state(), \
                restoring_from(checkpoint_path):
            self.set_state({"algorithm": ckpt.state, "policies": policies}, add_policies=True)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | Any = None,
        *,
        policy_ids: Iterable[str] | None = None,
        policy_mapping_fn: Callable[..., str] | None = None,
        policies_to_train: Iterable[str] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        allow_pickle: bool | None = None,
        env: Any = None,
        pm: pluggy.PluginManager | None = None,
        callbacks: type[DefaultCallbacks] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        framework: str | None = None,
    ) -> Any:
        """A new algorithm of the checkpointed class with the checkpointed state.

        :param path: a directory or an fsspec URL (only the policies read are downloaded), or a Ray
            Tune/Train ``Checkpoint`` (:func:`checkpoint_location`).
        :param policy_ids: build and read only these policies.
        :param policy_mapping_fn, policies_to_train: replace the saved ones (a mapping not saved: required).
        :param env: replaces the saved environment (an id, a registered name or an env class).
        :param pm: the plugin manager to read with, kept for later saves (default: the process's).
        :param callbacks: replaces the saved callbacks class.
        :param storage_options: for a URL, its fsspec options (kept for later saves; the saved
            ``storage_path`` is never taken: ``algo.config.checkpointing(storage_path=...)``).
        :param framework: rebuild the policies in ``"torch"`` or ``"tf2"`` (:mod:`amber.policy.frameworks`).
        :raises ValueError: no path, an unknown framework (before anything is read), or a
            ``policies_to_train`` naming a policy not loaded. ``TypeError``: either list is a str.
        :raises InvalidStateError: a state that does not fit (:func:`saved_config.check_policy_networks`).
        """
        from amber.algorithms.algorithm_config import FRAMEWORKS
        from amber.checkpoint import read_checkpoint

        target = checkpoint_location(path if path is not None else checkpoint)
        if target is None:
            raise ValueError("from_checkpoint needs a path")
        if policy_ids is not None and not isinstance(policy_ids, (str, bytes)):
            policy_ids = list(policy_ids)  # read more than once (an iterator would be empty the second time)
        if framework is not None and framework not in FRAMEWORKS:
            raise ValueError(f"framework {framework!r} is not supported; choices: {', '.join(FRAMEWORKS)}")
        ckpt = read_checkpoint(target, policy_ids=policy_ids, allow_pickle=allow_pickle, pm=pm,
                               storage_options=storage_options)
        if ckpt.type != "Algorithm":
            raise CheckpointError(f"{target} is a {ckpt.type} checkpoint, not an Algorithm one; "
                                  "Policy.from_checkpoint reads policy checkpoints", path=target)
        from amber.envs.ray_runners import restoring_from, runner_deaths_pass

        with runner_deaths_pass(), state_errors(target), restoring_from(target):
            from amber.policy.frameworks import with_framework

            states = {pid: p.state for pid, p in ckpt.policies.items()}
            own, states = with_framework(ckpt.state, states, framework)
            algo_cls, config = config_from_state(
                own, path=target, pm=pm, policy_ids=policy_ids, policy_mapping_fn=policy_mapping_fn,
                env=env, callbacks=callbacks)
            config.storage_options = dict(storage_options or {}) or config.storage_options
        return _restored(algo_cls, config, own, states, target, policies_to_train, policy_ids=policy_ids,
                         mapping_fn=policy_mapping_fn, pm=pm, saved_ids=ckpt.manifest.get("policy_ids"))


#: pyarrow file system type names → the fsspec protocol of their URLs.
_ARROW_PROTOCOLS = {"s3": "s3", "gcs": "gs", "hdfs": "hdfs", "abfs": "abfs"}


def checkpoint_location(checkpoint: Any) -> Any:
    """Where a checkpoint argument points: a Ray Tune/Train ``Checkpoint`` (RLlib takes one: an
    object with a ``path`` and a pyarrow ``filesystem``) as its local path, or as the URL of its
    remote file system (whose credentials are fsspec's then: ``storage_options``); a
    :class:`SaveResult` as its checkpoint's path; an object whose ``path`` is a ``Path`` as that;
    anything else unchanged."""
    if isinstance(checkpoint, (str, bytes, PurePath)) or checkpoint is None:
        return checkpoint
    if isinstance(checkpoint, SaveResult):  # algo.save()'s result itself, for its checkpoint
        return checkpoint.checkpoint.path
    path = getattr(checkpoint, "path", None)
    if isinstance(path, PurePath) and not isinstance(checkpoint, os.PathLike):
        return path
    if not isinstance(path, str) or (isinstance(checkpoint, os.PathLike)
                                     and not hasattr(checkpoint, "filesystem")):
        return checkpoint  # amber's SaveResult, other path-likes (Ray's Checkpoint refuses fspath)
    kind = str(getattr(getattr(checkpoint, "filesystem", None), "type_name", "local"))
    if kind == "local" or "://" in path:
        return path
    return f"{_ARROW_PROTOCOLS.get(kind, kind)}://{path.lstrip('/')}"


def _restored(algo_cls: type, config: AlgorithmConfig, own: Mapping[str, Any], states: Mapping[str, Any],
              path: str | os.PathLike[str], policies_to_train: Iterable[str] | None, *,
              policy_ids: Iterable[str] | None, mapping_fn: Any, pm: pluggy.PluginManager | None,
              saved_ids: Iterable[str] | None) -> Any:
    """A new ``algo_cls`` algorithm with these policies' states and its own state ``own`` (of the
    checkpoint ``path``, holding ``saved_ids``), training ``policies_to_train`` when given (the
    caller's argument: a ValueError, not the checkpoint's); on error, stopped (its environments
    released). The running episodes continue with all the saved policies and the saved mapping
    (:func:`~amber.algorithms.given_again.same_episodes`); with ``policy_ids``, the others' recent
    returns are forgotten, and a save without them warns."""
    from amber.algorithms.algorithm_config import adopting_config, set_managed
    from amber.algorithms.given_again import same_episodes
    from amber.algorithms.policy_map import seeded_specs
    from amber.envs.ray_runners import restoring_from, runner_deaths_pass
    from amber.models.build_budget import adopting_state, state_size, weights_will_be_loaded
    from amber.policy.spaces import using_saved_spaces

    same = same_episodes(own, policy_ids, mapping_fn, pm)  # continue the saved running episodes?
    if policies_to_train is not None:
        config.policies_to_train = saved_config.given_policies_to_train(policies_to_train, config.policies)
    # every policy built here gets its saved weights, so its size is bounded by theirs; its
    # spaces are those saved, so the env is not built until sampling needs it
    with runner_deaths_pass(), state_errors(path), restoring_from(path):
        specs, config.policies = config.policies, seeded_specs(config.policies, states)  # their saved seeds
        try:
            with weights_will_be_loaded(sum(map(state_size, states.values()))), using_saved_spaces(states), \
                    adopting_config(config):  # made for this algorithm alone: not copied
                algo = algo_cls(config=config)
        finally:
            set_managed(config, policies=specs)  # (the algorithm's, frozen: as the checkpoint's has them)
        try:
            saved_config.check_policy_networks(algo, own, states, path)  # what other loaders build
            with adopting_state():  # the state read is this restore's: arrays are kept, not copied
                algo.set_state({"algorithm": own, "policies": states}, restore_episodes=same, rollback=False)
            if policy_ids is not None:
                algo._restored_in_part(path, saved_ids or own["config"].get("policies", []))
        except BaseException:
            with contextlib.suppress(Exception):
                algo.stop()  # (its environments)
            raise
    return algo
