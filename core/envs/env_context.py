"""The ``env_config`` an environment is built with: a dict that also says which copy it is.

RLlib passes env creators and env classes an ``EnvContext``; code ported from it reads
``env_config.worker_index`` (to seed or shard by runner) and ``env_config.vector_index``.
amber passes an :class:`EnvContext` too: the config's ``env_config`` items, plus where the
copy runs. Imports nothing heavy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["EnvContext", "env_context"]


class EnvContext(dict):  # type: ignore[type-arg]
    """An ``env_config`` dict with the attributes of the env copy it builds.

    It equals, iterates and unpacks (``**env_config``) as the plain dict of its items; the
    attributes are not items. The algorithm's config keeps the plain ``env_config`` (that is what
    a checkpoint stores).

    :param env_config: the settings (the config's ``env_config``).
    :param worker_index: the env runner building the env: 0 for the algorithm's own process,
        1..N for the Ray env runners (``num_env_runners=N``).
    :param vector_index: which of the runner's ``num_envs_per_env_runner`` copies it is (0..M-1).
    :param num_workers: ``num_env_runners`` (0: sampling in the algorithm's process).
    :param remote: whether each env copy is its own Ray actor: always False in amber.
    """

    def __init__(self, env_config: Mapping[str, Any] | None = None, worker_index: int = 0,
                 vector_index: int = 0, num_workers: int = 0, remote: bool = False) -> None:
        super().__init__(env_config or {})
        self.worker_index = int(worker_index)
        self.vector_index = int(vector_index)
        self.num_workers = int(num_workers)
        self.remote = bool(remote)

    def copy_with_overrides(self, env_config: Mapping[str, Any] | None = None,
                            worker_index: int | None = None, vector_index: int | None = None,
                            num_workers: int | None = None, remote: bool | None = None) -> EnvContext:
        """A copy, with the given items (replacing all of them) and attributes changed."""
        return EnvContext(
            dict(self) if env_config is None else env_config,
            self.worker_index if worker_index is None else worker_index,
            self.vector_index if vector_index is None else vector_index,
            self.num_workers if num_workers is None else num_workers,
            self.remote if remote is None else remote)

    def __reduce__(self) -> tuple[Any, ...]:
        return (EnvContext, (dict(self), self.worker_index, self.vector_index, self.num_workers, self.remote))


def env_context(env_config: Mapping[str, Any] | None, **attributes: int) -> EnvContext:
    """An :class:`EnvContext` of ``env_config``'s items, keeping its attributes when it is one,
    with ``attributes`` (``worker_index``, ``vector_index``, ``num_workers``) changed.

    :param env_config: a plain dict, an :class:`EnvContext`, or None (no settings).
    """
    if isinstance(env_config, EnvContext):
        return env_config.copy_with_overrides(**attributes)
    return EnvContext(env_config, **attributes)
