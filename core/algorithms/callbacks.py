"""Callbacks: user code run by an algorithm at fixed points (RLlib's ``ray.rllib.algorithms.callbacks``).

Subclass :class:`DefaultCallbacks`, override the methods you need and pass the class
to the config (``config.callbacks(MyCallbacks)``; until that method exists,
``config.callbacks_class = MyCallbacks``). The algorithm builds one instance and calls,
synchronously, in the calling thread:

- :meth:`~DefaultCallbacks.on_algorithm_init` at the end of the algorithm's construction;
- :meth:`~DefaultCallbacks.on_train_result` after each ``train()``, with its result;
- :meth:`~DefaultCallbacks.on_checkpoint` after each ``save()`` is committed (and pruned);
  with ``save(block=False)`` it runs in the background writer thread once the checkpoint
  is committed, and an exception it raises becomes that save's error (``handle.result()``).

No other hook is called: a class defining another ``on_*`` method (RLlib's ``on_episode_end``,
``on_sample_end``, ``on_learn_on_batch``...) is refused when it is given to the config or the
algorithm is built (:func:`check_callbacks_class`), instead of being silently ignored.

A checkpoint stores the callbacks class by its registered name (:func:`amber.register_class`).
An unregistered class is kept as it is by pickle; a portable format stores a placeholder,
and ``Algorithm.from_checkpoint`` then warns and uses :class:`DefaultCallbacks` unless
given ``callbacks=``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from amber.algorithms.result_log import flat_scalars
from amber.errors import warn

__all__ = ["CALLED_HOOKS", "DefaultCallbacks", "TensorBoardLogger", "callbacks_from_state",
           "check_callbacks_class", "make_multi_callbacks", "uncalled_hooks"]


class DefaultCallbacks:
    """Callbacks that do nothing: the base class of every callbacks class."""

    def on_algorithm_init(self, *, algorithm: Any, **kwargs: Any) -> None:
        """Called once the algorithm is built (before a checkpoint's state is applied to it).

        :param algorithm: the algorithm.
        """

    def on_train_result(self, *, algorithm: Any, result: dict[str, Any], **kwargs: Any) -> None:
        """Called after each ``train()`` with its result (which it may add to).

        :param algorithm: the algorithm.
        :param result: what ``train()`` returns.
        """

    def on_checkpoint(self, *, algorithm: Any, checkpoint_path: str, **kwargs: Any) -> None:
        """Called after each checkpoint ``algorithm.save()`` committed.

        :param algorithm: the algorithm.
        :param checkpoint_path: the checkpoint's directory.
        """


def make_multi_callbacks(classes: Sequence[type[DefaultCallbacks]]) -> type[DefaultCallbacks]:
    """One callbacks class calling each of ``classes`` in turn (RLlib's ``make_multi_callbacks``).

    The class made has no registered name: a portable checkpoint stores a placeholder for it.

    :param classes: callbacks classes, each a subclass of :class:`DefaultCallbacks`.
    """
    members = tuple(classes)
    check_callbacks_class(members)

    class MultiCallbacks(DefaultCallbacks):
        def __init__(self) -> None:
            self.members = [cls() for cls in members]

        def on_algorithm_init(self, **kwargs: Any) -> None:
            for member in self.members:
                member.on_algorithm_init(**kwargs)

        def on_train_result(self, **kwargs: Any) -> None:
            for member in self.members:
                member.on_train_result(**kwargs)

        def on_checkpoint(self, **kwargs: Any) -> None:
            for member in self.members:
                member.on_checkpoint(**kwargs)

    return MultiCallbacks


#: The hooks amber calls: every ``on_*`` method of :class:`DefaultCallbacks`.
CALLED_HOOKS = tuple(sorted(name for name in vars(DefaultCallbacks) if name.startswith("on_")))


def uncalled_hooks(cls: type) -> list[str]:
    """The ``on_*`` methods ``cls`` (or a base other than :class:`DefaultCallbacks`) defines that
    amber never calls (RLlib's ``on_episode_end``, ``on_sample_end``...), sorted."""
    defined = {name for klass in cls.__mro__ if klass not in (DefaultCallbacks, object)
               for name, value in vars(klass).items() if name.startswith("on_") and callable(value)}
    return sorted(defined - set(CALLED_HOOKS))


def check_callbacks_class(value: Any, *, strict: bool = True) -> None:
    """Check a callbacks class (or a sequence of them).

    A hook amber never calls is refused rather than silently ignored, as RLlib settings amber
    does not have are: a class ported from RLlib that overrides ``on_episode_end`` expects it
    to run. With ``strict`` False (a class a checkpoint names, which loaded before this check
    existed), it is a warning instead.

    :raises ValueError: one is not a subclass of :class:`DefaultCallbacks`, or defines an ``on_*``
        method amber never calls (named, with :data:`CALLED_HOOKS`).
    """
    for cls in value if isinstance(value, (tuple, list)) else (value,):
        if not (isinstance(cls, type) and issubclass(cls, DefaultCallbacks)):
            raise ValueError(f"callbacks must be a subclass of amber.algorithms.callbacks.DefaultCallbacks, "
                             f"not {cls!r}")
        uncalled = uncalled_hooks(cls)
        if uncalled:
            message = (
                f"callbacks class {cls.__qualname__} defines {', '.join(uncalled)}, which amber never "
                f"calls: amber calls only {', '.join(CALLED_HOOKS)} (it has no episode, sample or "
                "learner hooks: compute such metrics in on_train_result from train()'s result, "
                "e.g. episode_return_mean, episodes_this_iter); remove or rename them")
            if strict:
                raise ValueError(message)
            warn(message)


def callbacks_from_state(value: Any, given: type[DefaultCallbacks] | None,
                         path: str | os.PathLike[str]) -> Any:
    """The callbacks class to restore instead of the stored one: ``given``; else, for a
    placeholder (an unregistered class a portable format could not store), a warning and
    :class:`DefaultCallbacks`.

    :param value: the stored ``config.callbacks_class``.
    :param given: the caller's class, or None.
    :param path: the checkpoint (for the warning).
    :return: the class, or None to resolve the stored name as usual.
    """
    from amber.state import Ref

    if given is not None:
        return given
    if isinstance(value, Ref) and value.is_placeholder:
        warn(f"{path} was saved without its callbacks class ({value.target[1:]!r} has no "
             "registered name); using DefaultCallbacks: pass from_checkpoint(path, callbacks=...) "
             "or register it with amber.register_class before saving")
        return DefaultCallbacks
    return None


class TensorBoardLogger(DefaultCallbacks):
    """Writes every numeric scalar of each ``train()`` result to TensorBoard event files in
    the algorithm's log dir, at step ``num_env_steps_sampled_lifetime``; nested results are
    tagged ``a/b``.

    Needs ``torch.utils.tensorboard`` (``pip install tensorboard``); see the files with
    ``tensorboard --logdir <algo.logdir>``.
    """

    def __init__(self) -> None:
        self.writer: Any = None

    def on_train_result(self, *, algorithm: Any, result: dict[str, Any], **kwargs: Any) -> None:
        """Write the result's scalars, then flush them to disk."""
        if self.writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoardLogger needs the tensorboard package: "
                                  "pip install tensorboard") from e
            self.writer = SummaryWriter(log_dir=algorithm.logdir)
        step = int(result.get("num_env_steps_sampled_lifetime") or result["training_iteration"])
        for tag, value in flat_scalars(result).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()
