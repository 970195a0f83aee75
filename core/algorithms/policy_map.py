"""An algorithm's policies by id: :meth:`get_policy`, :meth:`add_policy` and :meth:`remove_policy`
(RLlib's API), for :class:`~amber.algorithms.algorithm.Algorithm`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from amber.algorithms.algorithm_config import DEFAULT_POLICY_ID
from amber.policy.policy import Policy, PolicySpec

if TYPE_CHECKING:
    from amber.algorithms.algorithm_config import AlgorithmConfig
    from amber.envs.env_runner import EnvRunner

__all__ = ["PolicyMapMixin"]


class PolicyMapMixin:
    """Looking up, adding and removing policies; the mapping and training set follow."""

    policies: dict[str, Policy]
    config: AlgorithmConfig
    env_runner: EnvRunner | Any

    if TYPE_CHECKING:  # the algorithm's own (amber.algorithms.algorithm.Algorithm)
        def _build_policy(self, policy_id: str, spec: Any, index: int,
                          observation_space: Any = None, action_space: Any = None) -> Policy: ...

        def _mapping_fn(self) -> Callable[..., str] | None: ...

    def get_policy(self, policy_id: str = DEFAULT_POLICY_ID) -> Policy | None:
        """The policy with this id, or None."""
        return self.policies.get(policy_id)

    def add_policy(
        self,
        policy_id: str,
        policy_cls: type | None = None,
        *,
        observation_space: Any = None,
        action_space: Any = None,
        config: Mapping[str, Any] | None = None,
        policy_state: Mapping[str, Any] | None = None,
        policy_mapping_fn: Callable[..., str] | None = None,
        policies_to_train: Iterable[str] | None = None,
        policy: Policy | None = None,
    ) -> Policy:
        """Add a policy (built, or given), optionally with a new mapping and training set."""
        from amber.layout import check_id

        check_id(policy_id)
        if policy_id in self.policies:
            raise ValueError(f"policy {policy_id!r} already exists")
        if policy is None:
            spec = PolicySpec(policy_cls, observation_space, action_space, config)
            policy = self._build_policy(policy_id, spec, len(self.policies), observation_space, action_space)
        if policy_state is not None:
            policy.set_state(policy_state)
        self.policies[policy_id] = policy
        self.config.policies[policy_id] = PolicySpec(type(policy), config=config)
        self._update_mapping(policy_mapping_fn, policies_to_train)
        return policy

    def remove_policy(
        self,
        policy_id: str = DEFAULT_POLICY_ID,
        *,
        policy_mapping_fn: Callable[..., str] | None = None,
        policies_to_train: Iterable[str] | None = None,
    ) -> None:
        """Remove a policy, optionally with a new mapping and training set."""
        self.policies.pop(policy_id)
        self.config.policies.pop(policy_id, None)
        if self.config.policies_to_train is not None and policies_to_train is None:
            policies_to_train = [p for p in self.config.policies_to_train if p != policy_id]
        self._update_mapping(policy_mapping_fn, policies_to_train)

    def _update_mapping(self, fn: Callable[..., str] | None, train: Iterable[str] | None) -> None:
        if fn is not None:
            self.config.policy_mapping_fn = fn
        if train is not None:
            self.config.policies_to_train = list(train)
        self.env_runner.set_policies(self.policies, self._mapping_fn())
