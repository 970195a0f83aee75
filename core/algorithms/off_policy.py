"""What DQN and SAC share: sampling into replay buffers and learning from them.

One ``train()`` repeats rounds until at least
``min_sample_timesteps_per_iteration`` env steps were sampled. A round
samples ``rollout_fragment_length`` steps from every env copy, adds each
policy's transitions to that policy's :class:`~amber.utils.replay_buffers.ReplayBuffer`,
then makes gradient updates: one per round by default (RLlib's "natural"
ratio), or as many as ``training_intensity`` asks (replayed steps per sampled
step); an update counts ``train_batch_size`` in ``num_env_steps_trained_lifetime`` once (as
RLlib's ``num_env_steps_trained``) and per policy updated in ``num_agent_steps_trained_lifetime``.
With ``num_env_runners=N`` remote runners, a round samples from every
env copy of every runner, ``rollout_fragment_length * num_envs_per_env_runner * N``
env steps. A policy learns once ``num_steps_sampled_before_learning_starts``
of its transitions were added to its buffer (the buffer's ``num_added``, which
checkpoints always hold) and the buffer holds that many rows, or is full when
its capacity is smaller (:meth:`OffPolicyAlgorithm.ready_to_learn`).

Checkpoints always hold every buffer's cursor, counters and sampling RNG;
the rows themselves only with ``.checkpointing(store_replay_buffer=True)``.
Without them, a restored algorithm starts from empty buffers and waits for
them to refill to ``num_steps_sampled_before_learning_starts`` rows (or to
capacity) before it learns again: exactly what the uninterrupted run does after
:meth:`OffPolicyAlgorithm.clear_replay_buffers`, which is what "bit-exact
resume without the buffer" means here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.training_state import UpdateCounters
from amber.errors import InvalidStateError
from amber.policy.sample_batch import TRANSITION_COLUMNS
from amber.utils.replay_buffers import ReplayBuffer

__all__ = ["OffPolicyAlgorithm", "OffPolicyHyperparameters", "ReplayBuffers", "check_replay_buffer_config",
           "check_replay_capacity"]


def check_replay_capacity(owner: str, capacity: object) -> None:
    """Refuse a replay buffer capacity that is not a positive int (a float such as 1e4, None or
    True included: DQN and SAC take the same values).

    :param owner: the config class's name, for the message.
    :param capacity: ``replay_buffer_config["capacity"]``.
    :raises ValueError: naming the value.
    """
    if isinstance(capacity, (bool, np.bool_)) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
        raise ValueError(f"{owner}: replay_buffer_config['capacity'] must be a positive int, "
                         f"got {capacity!r}")


#: RLlib's replay buffer types that sample uniformly, as amber's buffer does (``type`` may name one).
UNIFORM_BUFFERS = ("ReplayBuffer", "MultiAgentReplayBuffer", "EpisodeReplayBuffer",
                   "MultiAgentEpisodeReplayBuffer")
#: RLlib's other ``replay_buffer_config`` keys, at the one value amber's buffer behaves as.
_INERT = {"storage_unit": "timesteps", "replay_mode": "independent", "replay_sequence_length": 1,
          "replay_burn_in": 0, "num_shards": 1, "prioritized_replay": False,
          "worker_side_prioritization": False, "_enable_replay_buffer_api": True}
#: RLlib's prioritized replay parameters (2.10's names and the new stack's).
_PRIORITY_KEYS = ("prioritized_replay_alpha", "prioritized_replay_beta", "prioritized_replay_eps",
                  "alpha", "beta")


def check_replay_buffer_config(owner: str, rb: object, *, capacity_required: bool = False) -> None:
    """Refuse a ``replay_buffer_config`` amber's uniform buffer would not honour (DQN's and SAC's check).

    Accepted: ``capacity``; a uniform ``type`` (:data:`UNIFORM_BUFFERS`, a name, a dotted path or the
    class); RLlib's other keys at the value amber behaves as (``storage_unit="timesteps"``,
    ``replay_sequence_length=1``, ``prioritized_replay=False``...); and RLlib's prioritized replay
    parameters beside a uniform ``type`` (RLlib ignores them there). Refused: a prioritized or unknown
    ``type``, priority parameters without a uniform ``type`` (RLlib's default type is prioritized),
    any other key or value.

    :param owner: the config class's name, for the message.
    :param capacity_required: refuse a config without ``capacity`` (SAC's).
    :raises ValueError: naming the key and value.
    """
    uniform = ", ".join(UNIFORM_BUFFERS)
    if not isinstance(rb, Mapping) or (capacity_required and "capacity" not in rb):
        raise ValueError(f"{owner}: replay_buffer_config must be a dict with a positive int 'capacity', "
                         f"got {rb!r}")
    unknown = sorted(str(k) for k in rb if k not in ("capacity", "type", *_INERT, *_PRIORITY_KEYS))
    if unknown:
        raise ValueError(f"{owner}: replay_buffer_config: unknown key(s) {unknown}; amber's replay buffer "
                         f"is uniform and takes 'capacity', 'type' (one of {uniform}) and RLlib's "
                         f"{', '.join(f'{k}={v!r}' for k, v in _INERT.items())}")
    kind = rb.get("type")
    name = kind if isinstance(kind, str) or kind is None else getattr(kind, "__name__", repr(kind))
    name = None if name is None else name.rsplit(".", 1)[-1]
    prioritized = name is not None and "Prioritized" in name
    if name is not None and name not in UNIFORM_BUFFERS:
        why = "prioritized replay is not implemented" if prioritized else "no such uniform replay buffer"
        raise ValueError(f"{owner}: replay_buffer_config: type {kind!r} is not supported ({why}); "
                         f"amber's replay buffer is uniform: use one of {uniform}")
    asked = [k for k in _PRIORITY_KEYS if k in rb]
    if asked and name is None:
        raise ValueError(f"{owner}: replay_buffer_config: {asked} ask(s) for prioritized replay (RLlib's "
                         f"default type), which amber does not implement: its replay buffer is uniform. "
                         f"Drop them, or name a uniform 'type' (one of {uniform}), beside which RLlib "
                         "ignores them too")
    for key, value in _INERT.items():
        if key in rb and not _same(rb[key], value):
            why = " (prioritized replay is not implemented)" if key == "prioritized_replay" else ""
            raise ValueError(f"{owner}: replay_buffer_config: {key}={rb[key]!r} is not supported{why}; "
                             f"amber's replay buffer takes {key}={value!r} only")
    check_replay_capacity(owner, rb.get("capacity", 50_000))


def _same(given: object, value: object) -> bool:
    """Whether ``given`` is ``value`` (a str, int or bool; True is not 1)."""
    plain = isinstance(given, (str, int, np.integer)) and isinstance(given, bool) == isinstance(value, bool)
    return plain and given == value


@dataclass
class OffPolicyHyperparameters:
    """The settings DQN and SAC share (each may change their defaults)."""

    replay_buffer_config: dict[str, Any] = field(default_factory=lambda: {"capacity": 50_000})
    """The replay buffer, one per policy: ``{"capacity": N}`` transitions."""
    num_steps_sampled_before_learning_starts: int = 1000
    """A policy learns once this many of its sampled transitions went into its buffer and the buffer
    holds this many rows (or is full, when its capacity is smaller)."""
    training_intensity: float | None = None
    """Replayed steps per sampled step (None: one update per sampling round)."""
    min_sample_timesteps_per_iteration: int = 1000
    """One ``train()`` samples at least this many env steps."""
    rollout_fragment_length: int = 4
    """Env steps each env copy (of every env runner) takes per sampling round."""




class OffPolicyAlgorithm(Algorithm):
    """An algorithm that learns from replay buffers (one per policy).

    Subclasses implement :meth:`update_policy` (one gradient update from a
    sampled batch) and may override :meth:`transitions` (e.g. n-step returns).
    """

    def setup(self) -> None:
        """Make one replay buffer per policy."""
        self.replay_buffers = ReplayBuffers(
            {pid: self._make_buffer(index) for index, pid in enumerate(self.policies)})
        self.updates = UpdateCounters()

    def checkpoint_components(self) -> dict[str, object]:
        """An off-policy checkpoint holds :meth:`Algorithm.checkpoint_components`, every replay
        buffer's cursor, counters and RNG (its rows only with ``store_replay_buffer``) and the
        update counters; the policies hold their networks, targets and optimizers."""
        self.replay_buffers.store_rows = bool(self.config.store_replay_buffer)
        return {**super().checkpoint_components(), "replay_buffers": self.replay_buffers,
                "updates": self.updates}

    @property
    def num_updates(self) -> int:
        """Gradient update rounds made so far."""
        return self.updates.num_updates

    def _make_buffer(self, index: int) -> ReplayBuffer:
        capacity = int((self.config.replay_buffer_config or {}).get("capacity", 50_000))
        seed = None if self.config.seed is None else self.config.seed * 1000 + 500 + index
        return ReplayBuffer(capacity, seed=seed)

    def clear_replay_buffers(self) -> None:
        """Empty every replay buffer (what a restore without stored buffers starts from)."""
        for buffer in self.replay_buffers.values():
            buffer.clear()

    # -- the training loop -----------------------------------------------------------

    def transitions(self, policy_id: str, fragment: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The replay rows of one sampled trajectory fragment (default: :data:`TRANSITION_COLUMNS`)."""
        return {k: fragment[k] for k in TRANSITION_COLUMNS}

    def update_policy(self, policy_id: str, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """One gradient update of a policy from a replayed batch; return its learner stats (subclasses)."""
        raise NotImplementedError

    def ready_to_learn(self, policy_id: str) -> bool:
        """Whether a policy's buffer lets it learn: ``num_steps_sampled_before_learning_starts``
        of its transitions were ever added (counted in sampled steps, not capped by the capacity)
        and the buffer holds that many rows, or is full when its capacity is smaller (after
        :meth:`clear_replay_buffers` or a restore without stored rows, it refills first)."""
        buffer = self.replay_buffers[policy_id]
        starts = max(1, int(self.config.num_steps_sampled_before_learning_starts or 0))
        return buffer.num_added >= starts and len(buffer) >= min(starts, buffer.capacity)

    def steps_per_round(self) -> int:
        """Env steps one sampling round takes: ``rollout_fragment_length`` from every env copy of
        every env runner (the local one when ``num_env_runners`` is 0)."""
        cfg = self.config
        runners = max(1, int(cfg.num_env_runners or 0))
        return int(cfg.rollout_fragment_length) * int(cfg.num_envs_per_env_runner) * runners

    def _updates_this_round(self, sampled: int) -> int:
        intensity = self.config.training_intensity
        if intensity is None:
            return 1
        self.updates.update_credit += float(intensity) * sampled / int(self.config.train_batch_size)
        n = int(self.updates.update_credit)
        self.updates.update_credit -= n
        return n

    def training_step(self) -> dict[str, Any]:
        """Sample rounds into the buffers and learn from them until enough env steps were sampled."""
        cfg = self.config
        per_round = self.steps_per_round()
        target = max(1, int(cfg.min_sample_timesteps_per_iteration))
        sampled, updates = 0, 0
        stats: dict[str, dict[str, Any]] = {}
        trained = set(self.policies_to_train)
        while sampled < target:
            fragments, metrics = self.env_runner.sample(min(per_round, target - sampled), explore=True)
            self._record(metrics)
            sampled += int(metrics["num_env_steps"])
            for pid, frags in fragments.items():
                if pid in self.replay_buffers:
                    for frag in frags:
                        self.replay_buffers[pid].add(self.transitions(pid, frag))
            ready = [pid for pid in self.policies if pid in trained and self.ready_to_learn(pid)]
            if not ready:
                continue
            for _ in range(self._updates_this_round(int(metrics["num_env_steps"]))):
                for pid in ready:
                    batch = self.replay_buffers[pid].sample(int(cfg.train_batch_size))
                    stats[pid] = self.update_policy(pid, batch)
                    self.counters["num_agent_steps_trained_lifetime"] += int(cfg.train_batch_size)
                # one replayed batch of train_batch_size env steps per update, however many policies
                self.counters["num_env_steps_trained_lifetime"] += int(cfg.train_batch_size)
                self.updates.num_updates += 1
                updates += 1
        learner = {pid: {"learner_stats": s, "replay_buffer_size": len(self.replay_buffers[pid])}
                   for pid, s in stats.items()}
        return {"info": {"learner": learner}, "num_updates_this_iter": updates,
                "num_updates_lifetime": self.num_updates}

    # -- policies --------------------------------------------------------------------

    def add_policy(self, policy_id: str, *args: Any, **kwargs: Any) -> Any:
        """Add a policy (see :meth:`Algorithm.add_policy`) with its own, empty replay buffer."""
        policy = super().add_policy(policy_id, *args, **kwargs)
        self.replay_buffers[policy_id] = self._make_buffer(len(self.policies) - 1)
        return policy

    def remove_policy(self, policy_id: str = "default_policy", **kwargs: Any) -> None:
        """Remove a policy and its replay buffer."""
        super().remove_policy(policy_id, **kwargs)
        self.replay_buffers.pop(policy_id, None)

    # -- state -----------------------------------------------------------------------

    def set_state(self, state: Mapping[str, Any], **kwargs: Any) -> None:
        """:meth:`Algorithm.set_state`; on failure the replay buffers are the very objects from before."""
        buffers = dict(self.replay_buffers)
        try:
            super().set_state(state, **kwargs)
        except Exception:
            self.replay_buffers.clear()
            self.replay_buffers.update(buffers)
            raise


class ReplayBuffers(dict):  # type: ignore[type-arg]
    """Every policy's replay buffer by policy id; a checkpoint component.

    Its state always holds each buffer's cursor, counters and RNG, and the
    rows only when :attr:`store_rows`. Restoring checks every saved buffer
    before replacing any, and only the buffers of policies present.
    """

    store_rows = False

    def get_state(self) -> dict[str, Any]:
        """Each buffer's state by policy id."""
        return {pid: b.get_state(include_data=self.store_rows) for pid, b in self.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Replace the buffers of the policies present with the saved ones."""
        saved = {pid: s for pid, s in state.items() if pid in self}
        fresh = {pid: ReplayBuffer(1) for pid in saved}
        for pid, buffer_state in saved.items():  # check them all before replacing any
            capacity = buffer_state["capacity"] if isinstance(buffer_state, Mapping) else None
            if capacity != self[pid].capacity:  # also bounds what the restore allocates
                raise InvalidStateError(
                    f"the saved replay buffer of policy {pid!r} holds {capacity!r} rows, this "
                    f"algorithm's {self[pid].capacity} (replay_buffer_config capacity)")
            fresh[pid].set_state(buffer_state)
        self.update(fresh)
