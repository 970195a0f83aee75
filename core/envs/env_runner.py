"""Sampling: an :class:`EnvRunner` steps a few copies of an environment with the policies.

Single-agent gymnasium envs are driven as a multi-agent env with one agent,
id ``0`` (``"agent0"`` to a policy mapping function, as in RLlib). Every env copy is a
*slot* holding its running episode. ``sample()`` returns trajectory
fragments per policy; ``get_state()``/``set_state()`` capture the envs
(through the plugins' ``amber_capture_state`` hooks) and the running
episodes, so sampling continues bit-exactly after a restore.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.envs.multi_agent import MultiAgentEnv
from amber.envs.registry import env_context, make_env_copies, probe_env, probe_spaces
from amber.envs.runner_slots import Slot, only_policy, single_agent_policy, slot_state, unused_mapping_warning
from amber.envs.runner_state import Episode, mapping_caller, parse_slot
from amber.errors import CheckpointError, InvalidStateError, PluginLoadError, warn
from amber.policy.sample_batch import DEFAULT_POLICY_ID
from amber.policy.sample_batch import SAMPLED_COLUMNS as _COLUMNS

if TYPE_CHECKING:
    import pluggy

__all__ = ["DEFAULT_POLICY_ID", "SINGLE_AGENT_ID", "Episode", "EnvRunner", "only_policy", "probe_env",
           "probe_spaces", "single_agent_policy"]

#: What a policy mapping function is given as a single-agent env's one agent (the runner keys it
#: ``0``): RLlib 2.10's id for it, as its old API stack wraps a gymnasium env as agent ``"agent0"``.
SINGLE_AGENT_ID = "agent0"


def _uncaptured(env: Any, captured: Callable[[Any], bool]) -> str:
    """The warning for an env no plugin captures: its wrapper chain (outermost first), and the
    wrappers around the innermost part a plugin captures, whose own state is lost too."""
    chain = [env]
    while hasattr(chain[-1], "env") and chain[-1] is not getattr(chain[-1], "unwrapped", None):
        chain.append(chain[-1].env)
    names = [type(layer).__qualname__ for layer in chain]
    inner = next((i for i in range(1, len(chain)) if captured(chain[i])), len(chain) - 1)
    lost, rest, fix = ", ".join(names[:inner]), " > ".join(names[inner:]), "get_state()/set_state()"
    if not lost:
        return (f"no plugin captures the state of env {rest}: its running episodes are not saved and restart "
                f"on restore (give the env {fix} or implement amber_capture_state)")
    what = f"plugins capture {rest} but not" if captured(chain[inner]) else f"neither {rest} nor"
    return (f"no plugin captures the state of env {' > '.join(names)} (outermost first): {what} the "
            f"wrapper(s) around it, {lost}; its running episodes are not saved and restart on restore, "
            "and the wrappers' own state (such as NormalizeObservation's running statistics) is not saved "
            f"either (give the wrapper {fix} or implement amber_capture_state)")


class EnvRunner:
    """Steps ``num_envs`` copies of an environment, in turn, with the given policies.

    :param env: what :func:`amber.envs.make_env` accepts.
    :param env_config: the env's settings.
    :param num_envs: how many env copies to step.
    :param policies: the policies by id (the dict is used as given, not copied).
    :param policy_mapping_fn: ``fn(agent_id, episode, worker, **kw) -> policy id``, called once
        per agent per episode; a single-agent env's agent is :data:`SINGLE_AGENT_ID` (None:
        :func:`only_policy`, ``"default_policy"`` or the one policy there is). A single-agent
        env's agent keeps the policy it played when a policy is added (it is no longer the only
        one), and plays :func:`single_agent_policy`'s, with a warning, when the function names
        a policy that does not exist (an old checkpoint's leftover multi-agent mapping).
    :param seed: env copy ``i`` is reset with ``seed + i`` on its first reset (None: unseeded).
    :param first_env: an instance of the env, built with ``env_config`` and never reset, to use as
        copy 0 (:func:`probe_env`'s) instead of building one more.

    The env copies are built when first needed (sampling, :meth:`get_state`, restoring
    episodes, :attr:`envs`), not here: a restored algorithm that only acts never builds one.
    """

    def __init__(self, env: Any, env_config: Mapping[str, Any] | None, num_envs: int,
                 policies: Mapping[str, Any], policy_mapping_fn: Callable[..., Any] | None = None,
                 seed: int | None = None, pm: pluggy.PluginManager | None = None, *,
                 first_env: Any = None) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be at least 1, not {num_envs}")
        self.env_spec, self.env_config, self.seed = env, env_context(env_config), seed
        self.pm = pm
        self.worker_index = 0
        self.num_envs = int(num_envs)
        self._first_env = first_env
        self._built: list[Slot] | None = None
        self._multi_agent = False
        self._next_eps_id = 0
        self._bounds: dict[Any, tuple[np.ndarray, np.ndarray] | None] = {}
        self._warned = False
        self._mapping_warned = False
        self.set_policies(policies, policy_mapping_fn)

    @property
    def _slots(self) -> list[Slot]:
        """The env copies and their episodes, built on first use."""
        return self._built if self._built is not None else self._build()

    def _build(self) -> list[Slot]:
        made = [self._first_env] if self._first_env is not None else []
        self._first_env = None
        try:
            made += make_env_copies(self.env_spec, self.env_config, range(len(made), self.num_envs))
        except BaseException:
            for instance in made:
                instance.close()
            raise
        self._multi_agent = isinstance(made[0], MultiAgentEnv)
        self._built = [Slot(instance, i) for i, instance in enumerate(made)]
        return self._built

    @property
    def is_multi_agent(self) -> bool:
        """Whether the env is a :class:`~amber.envs.MultiAgentEnv` (building the copies if not yet)."""
        if self._built is None:
            self._build()
        return self._multi_agent

    @property
    def envs(self) -> list[Any]:
        """The env copies."""
        return [s.env for s in self._slots]

    # -- policies ----------------------------------------------------------------

    def set_policies(self, policies: Mapping[str, Any], policy_mapping_fn: Callable[..., Any] | None) -> None:
        """Use new policies and mapping (after adding or removing a policy).

        Running episodes keep their agents' policies where those still exist;
        agents whose policy is gone are mapped again.
        """
        self.policies, self.policy_mapping_fn = policies, policy_mapping_fn
        self._call_mapping: Callable[[Any, Episode], Any] | None = None  # made when first needed
        for slot in self._built or ():
            for agent, pid in list(slot.mapping.items()):
                if pid not in policies:
                    del slot.mapping[agent]
                    slot.pending.pop(agent, None)

    def sync_weights(self) -> None:
        """Nothing to send: this runner acts with the learner's own policies (remote runners do)."""

    def _policy_for(self, slot: Slot, agent: Any) -> str:
        pid = slot.mapping.get(agent)
        if pid is None:
            pid = slot.mapping[agent] = self._map_agent(slot, agent)
        return pid

    def _map_agent(self, slot: Slot, agent: Any) -> str:
        """The policy ``agent`` plays this episode (see the class's ``policy_mapping_fn``)."""
        fn, single = self.policy_mapping_fn, not self.is_multi_agent
        agent_id = SINGLE_AGENT_ID if single else agent
        if fn is None:
            pid = single_agent_policy(self.policies) if single else None
            pid = only_policy(self.policies) if pid is None else pid
        else:
            if self._call_mapping is None:  # fn's signature is read once, when first called
                self._call_mapping = mapping_caller(fn, self)
            pid = self._call_mapping(agent_id, slot.episode)
            kept = single_agent_policy(self.policies) if single else None
            if pid not in self.policies and kept is not None:
                if not self._mapping_warned:
                    self._mapping_warned = True
                    warn(unused_mapping_warning(fn, pid, kept))
                pid = kept
        if pid not in self.policies:
            how = "" if fn is not None else " (no policy_mapping_fn was given: give one)"
            raise ValueError(f"agent {agent_id!r} is mapped to policy {pid!r}, which does not exist "
                             f"(policies: {sorted(self.policies)}){how}")
        return pid

    # -- env plumbing ------------------------------------------------------------

    def _reset(self, slot: Slot) -> None:
        seed = None if slot.started or self.seed is None else self.seed + slot.index
        slot.started = True
        obs, _ = slot.env.reset(seed=seed)
        slot.new_episode(self._next_eps_id, obs if self.is_multi_agent else {0: obs})
        self._next_eps_id += 1

    def _step(self, slot: Slot, actions: dict[Any, Any]) -> tuple[dict, dict, dict, dict]:
        if self.is_multi_agent:
            obs, rew, te, tr, _ = slot.env.step(actions)
            if not all(isinstance(d, Mapping) for d in (obs, rew, te, tr)):
                raise TypeError(f"{type(slot.env).__name__}.step must return dicts by agent id, not "
                                f"{[type(d).__name__ for d in (obs, rew, te, tr)]}")
            return obs, rew, te, tr
        obs, rew, te, tr, _ = slot.env.step(actions[0])
        return {0: obs}, {0: rew}, {0: te, "__all__": te}, {0: tr, "__all__": tr}

    def _env_action(self, slot: Slot, agent: Any, action: Any) -> Any:
        if agent not in self._bounds:
            env = slot.env
            space = env.get_action_space(agent) if self.is_multi_agent else env.action_space
            is_box = type(space).__name__ == "Box" and hasattr(space, "low")
            self._bounds[agent] = (space.low, space.high) if is_box else None
        bounds = self._bounds[agent]
        return action if bounds is None else np.clip(action, bounds[0], bounds[1])

    # -- sampling ----------------------------------------------------------------

    def sample(
        self, num_env_steps: int, *, explore: bool = True, exact: bool = False
    ) -> tuple[dict[str, list[dict[str, np.ndarray]]], dict[str, Any]]:
        """Step all env copies together until at least ``num_env_steps`` env steps were taken
        (``exact``: exactly that many; the last round steps only the first copies, and the
        others' episodes go on at the next call).

        :return: ``(fragments, metrics)``: per policy id, a list of trajectory
            fragments (dicts of equal-length columns ``obs``, ``new_obs``,
            ``actions``, ``rewards``, ``terminateds``, ``truncateds``, the
            policy's extra fetches and ``eps_id``), each ending where the
            agent's episode ended or where sampling stopped (then its last
            ``new_obs`` is the observation to bootstrap from); metrics
            ``episode_returns``, ``episode_lengths``, ``agent_episode_returns``
            (by policy id), ``num_env_steps``, ``num_agent_steps``.
        """
        out: dict[str, list[dict[str, np.ndarray]]] = {}
        metrics: dict[str, Any] = {"episode_returns": [], "episode_lengths": [], "agent_episode_returns": {},
                                   "num_env_steps": 0, "num_agent_steps": 0}
        while metrics["num_env_steps"] < num_env_steps:
            left = num_env_steps - metrics["num_env_steps"]
            self._vector_step(self._slots[:left] if exact else self._slots, explore, out, metrics)
        for slot in self._slots:
            for agent in list(slot.frags):
                self._flush(slot, agent, out)
        return out, metrics

    def _vector_step(self, slots: list[Slot], explore: bool, out: dict, metrics: dict) -> None:
        """One env step of each of ``slots``, their actions computed in one batch per policy."""
        groups: dict[str, tuple[list[tuple[Slot, Any]], list[Any]]] = {}
        for slot in slots:
            if slot.obs is None:
                self._reset(slot)
            for agent, ob in slot.obs.items():  # type: ignore[union-attr]
                members, obs = groups.setdefault(self._policy_for(slot, agent), ([], []))
                members.append((slot, agent))
                obs.append(ob)
        actions: dict[int, dict[Any, Any]] = {slot.index: {} for slot in slots}
        for pid, (members, obs) in groups.items():
            batch = np.asarray(obs[0])[None] if len(obs) == 1 else np.stack(obs)
            acts, _, extra = self.policies[pid].compute_actions(batch, explore=explore)
            acts = np.asarray(acts)
            extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
            for j, (slot, agent) in enumerate(members):
                act = acts[j]
                slot.pending[agent] = [obs[j], act, {k: v[j] for k, v in extra.items()}, 0.0]
                actions[slot.index][agent] = self._env_action(slot, agent, act)
        for slot in slots:
            self._advance(slot, actions[slot.index], out, metrics)

    def _advance(self, slot: Slot, actions: dict[Any, Any], out: dict, metrics: dict) -> None:
        if not actions:
            raise RuntimeError(f'env {slot.index}: no agent acts, yet no terminateds["__all__"] ended it')
        obs, rew, te, tr = self._step(slot, actions)
        metrics["num_env_steps"] += 1
        slot.ep_len += 1
        for agent, r in rew.items():
            r = float(r)
            slot.ep_return += r
            slot.agent_returns[agent] = slot.agent_returns.get(agent, 0.0) + r
            if agent in slot.pending:
                slot.pending[agent][3] += r
        all_te, all_tr = bool(te.get("__all__", False)), bool(tr.get("__all__", False))
        episode_over = all_te or all_tr
        next_obs = {}
        for agent, ob in obs.items():
            if not (te.get(agent, False) or tr.get(agent, False)):
                next_obs[agent] = ob
        for agent in list(slot.pending):
            a_te, a_tr = bool(te.get(agent, False)), bool(tr.get(agent, False))
            if episode_over and not (a_te or a_tr):
                a_te, a_tr = all_te, not all_te
            if agent not in obs and not (a_te or a_tr):
                continue  # has not observed since acting (turn-based env): its reward keeps adding up
            ob, act, extra, reward = slot.pending.pop(agent)
            self._append(slot, agent, ob, obs.get(agent, ob), act, extra, reward, a_te, a_tr)
            metrics["num_agent_steps"] += 1
            if a_te or a_tr:
                self._flush(slot, agent, out)
                if not episode_over:
                    self._record_agent(slot, agent, metrics)
        if episode_over:
            for agent in list(slot.frags):
                self._flush(slot, agent, out)
            metrics["episode_returns"].append(slot.ep_return)
            metrics["episode_lengths"].append(slot.ep_len)
            for agent in list(slot.agent_returns):
                self._record_agent(slot, agent, metrics)
            self._reset(slot)
        else:
            slot.obs = next_obs

    def _record_agent(self, slot: Slot, agent: Any, metrics: dict) -> None:
        ret = slot.agent_returns.pop(agent, None)
        pid = slot.mapping.get(agent)
        if ret is not None and pid is not None:
            metrics["agent_episode_returns"].setdefault(pid, []).append(ret)

    def _append(self, slot: Slot, agent: Any, ob: Any, new_ob: Any, act: Any, extra: dict,
                reward: float, te: bool, tr: bool) -> None:
        frag = slot.frags.get(agent)
        if frag is None:
            frag = slot.frags[agent] = (slot.mapping[agent], {k: [] for k in (*_COLUMNS, *extra)})
        cols = frag[1]
        cols["obs"].append(ob)
        cols["new_obs"].append(new_ob)
        cols["actions"].append(act)
        cols["rewards"].append(reward)
        cols["terminateds"].append(te)
        cols["truncateds"].append(tr)
        for k, v in extra.items():
            cols[k].append(v)

    def _flush(self, slot: Slot, agent: Any, out: dict) -> None:
        pid, cols = slot.frags.pop(agent)
        batch = {k: np.stack(v) for k, v in cols.items()}
        batch["rewards"] = np.asarray(cols["rewards"], dtype=np.float32)
        batch["terminateds"] = np.asarray(cols["terminateds"], dtype=bool)
        batch["truncateds"] = np.asarray(cols["truncateds"], dtype=bool)
        batch["eps_id"] = np.full(len(cols["obs"]), slot.episode.id_, dtype=np.int64)
        out.setdefault(pid, []).append(batch)

    # -- state -------------------------------------------------------------------

    def _capture_envs(self) -> dict[str, Any]:
        from amber import components

        own = {str(s.index): s.env for s in self._slots if s.started}
        try:
            return components.capture(self, own, pm=self.pm)
        except PluginLoadError:
            raise  # a plugin's hook failed: named as it is, not retried env by env
        except CheckpointError:
            from amber.plugin_manager import default_plugin_manager

            hook = (self.pm or default_plugin_manager()).hook.amber_capture_state
            bad = [k for k, env in own.items() if hook(component=env, key=f"envs.{k}") is None]
            if not bad:
                raise
            if not self._warned:
                self._warned = True
                warn(_uncaptured(own[bad[0]], lambda e: hook(component=e, key="envs.probe") is not None))
            return components.capture(self, {k: e for k, e in own.items() if k not in bad}, pm=self.pm)

    def get_state(self) -> dict[str, Any]:
        """Every env's state and the running episodes, as a portable state tree (copies not yet
        built are saved as the fresh copies they will be, without building them)."""
        built = self._built is not None
        envs = self._capture_envs() if built else {}
        slots = [slot_state(s, str(s.index) in envs)
                 for s in (self._slots if built else [Slot(None, i) for i in range(self.num_envs)])]
        return {"num_envs": len(slots), "next_eps_id": self._next_eps_id, "envs": envs, "slots": slots}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output; envs whose state was not captured restart their episodes.

        Env copy ``i`` takes the saved copy ``i``'s state; copies the state lacks are left as they are.
        Everything is checked before anything changes.

        :raises InvalidStateError: a field is missing or of the wrong type.
        """
        from amber import components

        envs = state["envs"]
        if not isinstance(envs, Mapping) or not isinstance(state["slots"], list):
            raise InvalidStateError("env runner state: 'envs' must be a map and 'slots' a list")
        next_eps_id = state["next_eps_id"]
        if isinstance(next_eps_id, bool) or not isinstance(next_eps_id, (int, np.integer)):
            raise InvalidStateError("env runner state: next_eps_id must be an int")
        next_eps_id = int(next_eps_id)
        # with fewer or more env copies than saved, the common ones continue; the others start fresh
        parsed = [parse_slot(saved, slot.index, envs)
                  for slot, saved in zip(self._slots, state["slots"], strict=False)]
        own = {str(s.index): s.env for s in self._slots if str(s.index) in envs}
        components.restore(self, own, dict(envs), pm=self.pm)
        self._next_eps_id = next_eps_id
        for slot, values in zip(self._slots, parsed, strict=False):
            slot.started, slot.frags = values.pop("started"), {}
            slot.new_episode(-1, {})
            slot.obs = None  # not captured: restarts at the next sample (unseeded once started)
            for name, value in values.items():
                setattr(slot, name, value)
        self.set_policies(self.policies, self.policy_mapping_fn)

    def stop(self) -> None:
        """Close every env copy (those built: see the class)."""
        first, self._first_env = self._first_env, None
        for env in [s.env for s in self._built or ()] + ([first] if first is not None else []):
            env.close()
