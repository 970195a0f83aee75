"""An algorithm's policies by id: :meth:`get_policy`, :meth:`add_policy` and :meth:`remove_policy`
(RLlib's API), for :class:`~amber.algorithms.algorithm.Algorithm`; and what a restore does to
them (:meth:`PolicyMapMixin._adopt_saved_policies`): the checkpoint's policies, mapping and
training list, taken back if the restore fails."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from amber.algorithms.algorithm_config import DEFAULT_POLICY_ID
from amber.algorithms.config_freeze import set_managed
from amber.algorithms.training_state import PerPolicyValues, TrainingProgress
from amber.policy.policy import Policy, PolicySpec
from amber.state import Ref

if TYPE_CHECKING:
    import pluggy

    from amber.algorithms.algorithm_config import AlgorithmConfig
    from amber.envs.env_runner import EnvRunner

__all__ = ["PolicyMapMixin", "PolicyNotFoundError", "check_policies_to_train", "seeded_specs",
           "spaces_by_mapping"]


class PolicyNotFoundError(KeyError):
    """A policy id the algorithm does not have (:meth:`PolicyMapMixin.remove_policy`); the message
    lists the ids present."""

    def __init__(self, policy_id: str, present: Iterable[str]) -> None:
        self.policy_id = policy_id
        self.present = sorted(present)
        super().__init__(f"this algorithm has no policy {policy_id!r}; policies: "
                         f"{', '.join(self.present) or '(none)'}")

    def __str__(self) -> str:  # KeyError's quotes its argument
        return str(self.args[0])


def check_policies_to_train(train: Iterable[str] | None, policy_ids: Iterable[str]) -> list[str] | None:
    """``train`` as a list, checked as ``config.validate()`` checks it: every id names a policy.

    :raises TypeError: ``train`` is a str (pass a list of ids).
    :raises ValueError: it names unknown policies (named, with the known ones).
    """
    if train is None:
        return None
    if isinstance(train, str):
        raise TypeError(f"policies_to_train must be a list of policy ids, not the str {train!r}: "
                        f"pass [{train!r}]")
    wanted, known = list(train), sorted(policy_ids)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"policies_to_train names unknown policies {unknown}; policies: {known}")
    return wanted


def spaces_by_mapping(policy_id: str, fn: Callable[..., Any],
                      agent_spaces: Mapping[Any, tuple[Any, Any]]) -> tuple[Any, Any]:
    """The spaces of the first agent that ``fn`` maps to ``policy_id`` (the first agent's when none
    is), ``fn`` called as sampling calls it: with an episode (id 0) and as its signature allows
    (:func:`amber.envs.runner_state.mapping_caller`); there is no env runner yet (``worker=None``).

    :raises ValueError: ``fn`` failed on an agent and the agents' spaces differ, so which ones the
        policy needs cannot be known (the message names the mapping, the agent and the way out).
    """
    from amber.envs.runner_state import Episode, mapping_caller

    call, episode = mapping_caller(fn, None), Episode(0, 0)
    pairs = list(agent_spaces.items())
    for agent_id, pair in pairs:
        try:
            mapped = call(agent_id, episode)
        except Exception as e:
            if all(other == pairs[0][1] for _, other in pairs):  # every agent has these spaces
                return pairs[0][1]
            name = getattr(fn, "__qualname__", repr(fn))
            raise ValueError(
                f"policy_mapping_fn {name} failed on agent {agent_id!r} while building policy "
                f"{policy_id!r} ({type(e).__name__}: {e}), and the agents' spaces differ: give the "
                "policy its spaces, PolicySpec(observation_space=..., action_space=...)") from e
        if mapped == policy_id:
            return pair
    return pairs[0][1]


def _saved_value(value: Any, live: Any, what: str, pm: pluggy.PluginManager | None) -> Any:
    """A saved mapping or training list made live: a registered name resolved, a placeholder (an
    unregistered function a portable format could not store) replaced by the ``live`` one."""
    if not isinstance(value, Ref):
        return value
    return live if value.is_placeholder else value.resolve(what=what, pm=pm)


def _warn_if_training_replaced(live: Any, saved: Any) -> None:
    """Warn when a restore replaces the training list the live config chose with the saved one
    (the "freeze some policies, restore, fine-tune" pattern would otherwise train them again)."""
    if live is None or (saved is not None and set(saved) == set(live)):
        return
    which = "every policy" if saved is None else f"{sorted(saved)}"
    warnings.warn(f"restore() trains what the checkpoint trained ({which}), not this config's "
                  f"policies_to_train {sorted(live)}; to keep yours, set "
                  "algo.config.policies_to_train again after restore()", stacklevel=4)


def _saved_spec(spec: Any, pid: str, pm: pluggy.PluginManager | None) -> Any:
    """A saved policy spec as ``config.policies`` holds it (its class resolved by registered name)."""
    from amber.algorithms.config_values import _spec_from_dict

    if isinstance(spec, Mapping) and isinstance(spec.get("policy_class"), Ref):
        spec = {**spec, "policy_class": spec["policy_class"].resolve(what=f"policies.{pid}", pm=pm)}
    return _spec_from_dict(dict(spec) if isinstance(spec, Mapping) else spec, pid)


class PolicyMapMixin:
    """Looking up, adding and removing policies; the mapping and training set follow."""

    policies: dict[str, Policy]
    config: AlgorithmConfig
    env_runner: EnvRunner | Any
    pm: pluggy.PluginManager
    progress: TrainingProgress
    #: After a restore of some of a checkpoint's policies: that checkpoint and the policies left out.
    _subset_of: tuple[str | os.PathLike[str], list[str]] | None = None

    if TYPE_CHECKING:  # the algorithm's own (amber.algorithms.algorithm.Algorithm)
        def _build_policy(self, policy_id: str, spec: Any, index: int, observation_space: Any = None,
                          action_space: Any = None, *, mapping_fn: Callable[..., str] | None = None,
                          ) -> Policy: ...

        def _mapping_fn(self) -> Callable[..., str] | None: ...

        def policy_config(self, policy_id: str, overrides: Mapping[str, Any],
                          index: int) -> dict[str, Any]: ...

        def checkpoint_components(self) -> dict[str, object]: ...

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
        """Add a policy (built, or given), optionally with a new mapping and training set.

        A policy built without spaces gets those of an agent that the mapping (the new one, when
        given) sends to it. A ``policy`` given ready-made is recorded (for checkpoints) with
        ``config`` when given, else with its own settings that differ from those the algorithm
        gives a policy it builds. Everything is checked before anything changes.

        :raises ValueError: the id exists, or ``policies_to_train`` names unknown policies.
        :raises TypeError: ``policy`` is not a :class:`~amber.policy.policy.Policy`.
        """
        from amber.layout import check_id

        check_id(policy_id)
        if policy_id in self.policies:
            raise ValueError(f"policy {policy_id!r} already exists")
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"add_policy(policy=...) takes a Policy, not a {type(policy).__name__}")
        train = check_policies_to_train(policies_to_train, [*self.policies, policy_id])
        from amber.algorithms.config_checks import check_policy_spec

        check_policy_spec(self.config, policy_id, dict(config or {}))  # as .multi_agent()'s at build
        if policy is None:
            spec = PolicySpec(policy_cls, observation_space, action_space, config)
            policy = self._build_policy(policy_id, spec, len(self.policies), observation_space,
                                        action_space, mapping_fn=policy_mapping_fn)
        elif config is None:  # its own settings, where they differ from the algorithm's: what loaders build
            config = self._own_overrides(policy_id, policy)
        if policy_state is not None:
            policy.set_state(policy_state)
        self.policies[policy_id] = policy
        self.config.policies[policy_id] = PolicySpec(type(policy), config=config)
        self._update_mapping(policy_mapping_fn, train)
        return policy

    def _own_overrides(self, policy_id: str, policy: Policy) -> dict[str, Any] | None:
        """The settings of a ready-made ``policy`` that differ from those the algorithm gives a
        policy it builds (those of the whole algorithm, which it applies itself, left out), so that
        its loaders build it with its own config again. Settings this algorithm cannot hold in a
        policy's overrides are left out, with a warning (a restore builds it with the algorithm's)."""
        from amber.algorithms.config_checks import ALGORITHM_WIDE_KEYS, check_policy_spec
        from amber.algorithms.given_again import same_value

        spec_state = getattr(policy, "policy_spec_state", None)  # its config as its state holds it
        own = spec_state()["config"] if callable(spec_state) else policy.config
        given = self.policy_config(policy_id, {}, len(self.policies))
        overrides = {k: own[k] for k in given.keys() & own.keys()
                     if k not in ALGORITHM_WIDE_KEYS and not same_value(own[k], given[k])}
        try:
            check_policy_spec(self.config, policy_id, overrides)
        except ValueError as e:
            warnings.warn(f"add_policy({policy_id!r}, policy=...): its config cannot be recorded in this "
                          f"algorithm's ({e}); a restore builds it with the algorithm's", stacklevel=3)
            return None
        return overrides or None

    def remove_policy(
        self,
        policy_id: str = DEFAULT_POLICY_ID,
        *,
        policy_mapping_fn: Callable[..., str] | None = None,
        policies_to_train: Iterable[str] | None = None,
    ) -> None:
        """Remove a policy (and its per-policy values, such as PPO's KL coefficient, and its recent
        returns), optionally with a new mapping and training set.

        :raises PolicyNotFoundError: (a KeyError) no such policy; the message lists the ids present.
        :raises ValueError: ``policies_to_train`` names unknown policies (nothing is removed).
        """
        if policy_id not in self.policies:
            raise PolicyNotFoundError(policy_id, self.policies)
        rest = [pid for pid in self.policies if pid != policy_id]
        train = check_policies_to_train(policies_to_train, rest)
        if self.config.policies_to_train is not None and train is None:
            train = [p for p in self.config.policies_to_train if p != policy_id]
        self.policies.pop(policy_id)
        self.config.policies.pop(policy_id, None)
        for values in self._per_policy_values():
            values.pop(policy_id, None)
        self.progress.keep_policies(self.policies)  # its recent returns: a later one of this id starts afresh
        self._update_mapping(policy_mapping_fn, train)

    def _update_mapping(self, fn: Callable[..., str] | None, train: list[str] | None) -> None:
        if fn is not None:
            set_managed(self.config, policy_mapping_fn=fn)  # (the config is frozen: config_freeze)
        if train is not None:
            set_managed(self.config, policies_to_train=train)
        self.env_runner.set_policies(self.policies, self._mapping_fn())

    def _per_policy_values(self) -> list[PerPolicyValues]:
        """The checkpoint components that hold a value per policy id."""
        return [c for c in self.checkpoint_components().values() if isinstance(c, PerPolicyValues)]

    # -- restoring -------------------------------------------------------------------------

    def _adopt_saved_policies(self, state: Mapping[str, Any]) -> Callable[[], None]:
        """Give this algorithm a checkpoint's policies (``state`` is :meth:`get_state`'s form): build
        those it lacks from their saved specs, on their saved spaces, and use the saved mapping and
        training list (a mapping saved as a placeholder, or as None, keeps the live one). Policies
        the checkpoint lacks stay (as RLlib's restore leaves them): the saved mapping decides which
        policies act. Return the function that takes it all back (if the restore then fails).

        :raises CheckpointError: a saved class or function is not registered here.
        """
        saved = state["algorithm"].get("config")
        saved = saved if isinstance(saved, Mapping) else {}
        missing = [pid for pid in state["policies"] if pid not in self.policies]
        old_fn, old_train = self.config.policy_mapping_fn, self.config.policies_to_train
        fn = _saved_value(saved.get("policy_mapping_fn"), old_fn, "config.policy_mapping_fn", self.pm)
        fn = fn or old_fn
        train = _saved_value(saved.get("policies_to_train", old_train), old_train,
                             "config.policies_to_train", self.pm)
        _warn_if_training_replaced(old_train, train)
        if not missing and fn is old_fn and train == old_train:
            filled = self._fill_saved_values(state)
            return lambda: _unfill(filled)
        specs = saved.get("policies") if isinstance(saved.get("policies"), Mapping) else {}
        specs = {pid: _saved_spec(specs.get(pid), pid, self.pm) for pid in missing}  # all, before building
        train = check_policies_to_train(train, [*self.policies, *missing])
        added: list[str] = []

        def undo() -> None:
            for pid in reversed(added):
                if pid in self.policies:
                    self.remove_policy(pid)  # and its per-policy values
            set_managed(self.config, policy_mapping_fn=old_fn, policies_to_train=old_train)
            self.env_runner.set_policies(self.policies, self._mapping_fn())
            _unfill(filled)

        filled: list[tuple[PerPolicyValues, str]] = []
        try:
            set_managed(self.config, policy_mapping_fn=fn, policies_to_train=train)
            self._add_saved_policies(specs, state, added)
            self.env_runner.set_policies(self.policies, self._mapping_fn())
            filled += self._fill_saved_values(state)
        except BaseException:
            undo()
            raise
        return undo

    def _add_saved_policies(self, specs: Mapping[str, Any], state: Mapping[str, Any],
                            added: list[str]) -> None:
        """Build and add the policies of ``specs`` on their saved spaces (each id appended to
        ``added`` before it is added), their models bounded by the size of their saved states."""
        from amber.models.build_budget import state_size, weights_will_be_loaded
        from amber.policy.spaces import using_saved_spaces

        states = {pid: state["policies"][pid] for pid in specs}
        seeded = seeded_specs(specs, states)  # built with its saved seed, whatever its place now
        with using_saved_spaces(states), weights_will_be_loaded(sum(map(state_size, states.values()))):
            for pid, spec in specs.items():
                policy = self._build_policy(pid, seeded[pid], len(self.policies),
                                            mapping_fn=self.config.policy_mapping_fn)
                overrides = spec.config if isinstance(spec, PolicySpec) else spec
                added.append(pid)
                self.add_policy(pid, policy=policy,  # (an algorithm's own add_policy: its buffers...)
                                config=overrides if isinstance(overrides, Mapping) else {})
                self.config.policies[pid] = spec  # as the checkpoint's config has it

    def _restored_in_part(self, source: str | os.PathLike[str], saved_ids: Iterable[str]) -> None:
        """After a restore of some of ``source``'s policies: forget the others' recent returns, and
        remember ``source`` for :meth:`_sources_to_keep`."""
        self.progress.keep_policies(self.policies)
        left_out = [pid for pid in saved_ids if pid not in self.policies]
        self._subset_of = (source, left_out) if left_out else None

    def _sources_to_keep(self, path: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        """On a save to ``path`` of an algorithm restored in part: the checkpoint it came from, while
        it holds policies this one lacks (retention never deletes it then); the first such save warns."""
        if self._subset_of is None:
            return []
        source, left_out = self._subset_of
        missing = [pid for pid in left_out if pid not in self.policies]
        if not missing:
            self._subset_of = None
            return []
        if not getattr(self, "_warned_subset", False):
            self._warned_subset = True
            from amber.errors import warn

            warn(f"this algorithm was restored with only some of the policies of {source}: the "
                 f"checkpoint saved to {path} lacks {missing}, which {source} still holds (retention "
                 "never deletes that one while this algorithm saves without them)")
        return [source]

    def _fill_saved_values(self, state: Mapping[str, Any]) -> list[tuple[PerPolicyValues, str]]:
        """A slot in each per-policy value map (PPO's KL coefficients...) for the policies that the
        state holds a value of and the map lacks (a policy added, or not trained yet), which
        restores only the ids it has; the saved value replaces the slot's. Return the slots made."""
        saved = state["algorithm"].get("components")
        saved = saved if isinstance(saved, Mapping) else {}
        made = []
        for key, values in self.checkpoint_components().items():
            if isinstance(values, PerPolicyValues) and isinstance(saved.get(key), Mapping):
                for pid in self.policies:
                    if pid in saved[key] and pid not in values:
                        values[pid] = values.kind()
                        made.append((values, pid))
        return made


def _unfill(made: Iterable[tuple[PerPolicyValues, str]]) -> None:
    """Take back the slots :meth:`PolicyMapMixin._fill_saved_values` made."""
    for values, pid in made:
        values.pop(pid, None)


def seeded_specs(specs: Mapping[str, Any], states: Mapping[str, Any]) -> dict[str, Any]:
    """``specs`` with each policy's seed as its saved state's config has it (a policy built at
    another place than the saved one, after add/remove_policy or in a subset, would get the seed
    of that place: a remote env runner rebuilt from it would draw otherwise)."""
    out = dict(specs)
    for pid, spec in specs.items():
        state = states.get(pid)
        saved = state.get("policy_spec") if isinstance(state, Mapping) else None
        config = saved.get("config") if isinstance(saved, Mapping) else None
        seed = config.get("seed", False) if isinstance(config, Mapping) else False
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            continue  # none saved (or not an int): the place's seed, as before
        if isinstance(spec, PolicySpec):
            out[pid] = PolicySpec(spec.policy_class, spec.observation_space, spec.action_space,
                                  {**spec.config, "seed": seed})
        elif spec is None or isinstance(spec, Mapping):
            out[pid] = {**(spec or {}), "seed": seed}
    return out
