"""RLlib 2.10's names on :class:`~amber.algorithms.algorithm.Algorithm`: the attributes amber lacks
(:data:`~amber.algorithms.rllib_api.NOT_IMPLEMENTED`), ``get_weights``/``set_weights`` by policy id,
and the RLlib 2.10 keys of a ``train()`` result (:func:`rllib_result_keys`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from amber.algorithms.rllib_api import NOT_IMPLEMENTED, _missing

__all__ = ["RESULT_KEYS", "RLlibAlgorithmMixin", "rllib_result_keys"]


class RLlibAlgorithmMixin:
    """RLlib's names on :class:`~amber.algorithms.algorithm.Algorithm`: the table's attributes
    (refused, naming what to use) and ``get_weights``/``set_weights`` of all policies."""

    policies: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        return _missing(self, NOT_IMPLEMENTED["Algorithm"], name)

    def get_weights(self, policies: str | Iterable[str] | None = None) -> dict[str, Any]:
        """The policies' weights, ``{policy_id: policy.get_weights()}`` (RLlib's form).

        :param policies: only these ids, or this one (a str is one id, as in RLlib; default: every policy).
        :raises ValueError: an id that is no policy of this algorithm.
        """
        if policies is None:
            wanted = list(self.policies)
        else:
            wanted = [policies] if isinstance(policies, str) else list(policies)
        _check_policy_ids(self, wanted)
        return {pid: self.policies[pid].get_weights() for pid in wanted}

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Set policies' weights from ``{policy_id: weights}`` (:meth:`get_weights`'s form); the env
        runners get them at the next ``train()``.

        :raises ValueError: an id that is no policy of this algorithm (before any weight is set).
        """
        _check_policy_ids(self, list(weights))
        for pid, policy_weights in weights.items():
            self.policies[pid].set_weights(policy_weights)


def _check_policy_ids(algo: RLlibAlgorithmMixin, ids: list[str]) -> None:
    unknown = [pid for pid in ids if pid not in algo.policies]
    if unknown:
        raise ValueError(f"{type(algo).__name__} has no policy {', '.join(map(repr, unknown))} "
                         f"(policies: {sorted(algo.policies)})")


#: RLlib 2.10's result keys → amber's key of the same quantity (RLlib's step counts are lifetime).
RESULT_KEYS = {
    "episode_reward_mean": "episode_return_mean", "episode_reward_max": "episode_return_max",
    "episode_reward_min": "episode_return_min", "policy_reward_mean": "policy_return_mean",
    "timesteps_total": "num_env_steps_sampled_lifetime",
    "num_env_steps_sampled": "num_env_steps_sampled_lifetime",
    "num_env_steps_trained": "num_env_steps_trained_lifetime",
    "num_agent_steps_trained": "num_agent_steps_trained_lifetime",
    "num_agent_steps_sampled": "num_agent_steps_sampled_lifetime",
    "agent_timesteps_total": "num_agent_steps_sampled_lifetime",
}


def rllib_result_keys(result: Mapping[str, Any]) -> dict[str, Any]:
    """The RLlib 2.10 keys of :data:`RESULT_KEYS` that ``result`` lacks, with the values of
    amber's keys for the same quantities (for Tune stops and code reading RLlib's names)."""
    return {old: result[new] for old, new in RESULT_KEYS.items() if new in result and old not in result}
