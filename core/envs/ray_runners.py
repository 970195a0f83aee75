"""Env runners as Ray actors: ``config.env_runners(num_env_runners=N)`` with N > 0.

Each of the N actors holds an :class:`~amber.envs.env_runner.EnvRunner` with
``num_envs_per_env_runner`` env copies and copies of the policies, which only act.
:class:`RemoteEnvRunners` is what the algorithm samples with then, in place of
its in-process runner: ``sample`` asks every actor for its share of the steps at
once and merges the fragments in runner order, so results depend on the seed
and N only. The learner's weights go to the object store once per training
iteration (``sync_weights``, one ``ray.put``), and every actor reads them from there.

Seeding: runner ``i`` (1..N) resets its env copy ``j`` with ``seed + i * M + j``
(M copies per runner; the in-process runner is ``i = 0``), and draws its
actions from generators seeded from the policy's seed and ``i``. Its state
(envs, running episodes, those generators) is part of the algorithm's
checkpoint, so a restore continues every runner exactly. A runner whose actor
dies is rebuilt from its seed (its episodes restart) and its share sampled
again, unless ``restart_failed_env_runners`` is off.

Ray is imported only here, and only when N > 0.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from amber.envs.ray_setup import RAY_EXTRA, check_env_runners, ensure_ray, import_ray, ray_installed
from amber.envs.runner_deaths import MAX_RESTARTS_PER_CALL, died_message, missing_module
from amber.envs.runner_generators import (
    checked_runner_states,
    generator_state,
    policy_generators,
    reseed,
    set_policy_generators,
)
from amber.errors import InvalidStateError, warn
from amber.scoped import scoped

if TYPE_CHECKING:
    import pluggy

    from amber.algorithms.algorithm_config import AlgorithmConfig
    from amber.envs.env_runner import EnvRunner

__all__ = ["EnvRunnerDiedError", "RemoteEnvRunners", "build_env_runners", "check_env_runners", "import_ray",
           "restoring_from", "runner_deaths_pass", "saved_env_runners"]

#: The most remote runners a checkpoint may ask to rebuild (each is a process).
MAX_SAVED_RUNNERS = 1024


def _is_remote_state(state: Any) -> bool:
    return isinstance(state, Mapping) and "remote_runners" in state


def saved_env_runners(own: Mapping[str, Any], declared: Any, path: Any) -> int:
    """The number of remote env runners to rebuild for a checkpoint's config.

    A checkpoint holding the state of N remote runners (saved by amber with N > 0)
    gets N runners again when ray is installed; without ray it samples in this process,
    with a warning (the runners' episodes restart). Any other checkpoint declaring
    runners (e.g. RLlib's remote workers, whose state is not saved) is read with 0.

    :raises InvalidStateError: the declared number is not that of the saved runner states
        (or above :data:`MAX_SAVED_RUNNERS`).
    """
    state = (own.get("components") or {}).get("env_runner")
    if not declared:
        return 0
    if not _is_remote_state(state):
        why = "their state was not saved"
    else:
        runners = state["remote_runners"]
        held = len(runners) if isinstance(runners, list) else "?"
        if (isinstance(declared, bool) or not isinstance(declared, int) or held != declared
                or declared > MAX_SAVED_RUNNERS):
            raise InvalidStateError(f"{path}: config.num_env_runners is {declared!r} but the checkpoint "
                                    f"holds the state of {held} env runners", path=path)
        if ray_installed():
            return declared
        why = f"ray is not installed ({RAY_EXTRA} to rebuild them)"
    warn(f"{path}: the checkpoint's config.num_env_runners is {declared!r}; {why}, so it is "
         "read as 0 (sampling in this process; the episodes restart)")
    return 0


_RESTORING: ContextVar[str | None] = ContextVar("amber_restoring_checkpoint", default=None)


def restoring_from(path: str | os.PathLike[str]) -> AbstractContextManager[None]:
    """Inside the block, states applied come from the checkpoint ``path`` (that warnings name)."""
    return scoped(_RESTORING, os.fspath(path))


def runner_state_fits(runner: Any, state: Any) -> bool:
    """Whether a saved ``env_runner`` state is of this runner's kind and size; warns when it is not
    (the caller then drops it, and the episodes restart), naming the checkpoint inside
    :func:`restoring_from`."""
    if state is None:
        return True
    remote = isinstance(runner, RemoteEnvRunners)
    fits = _is_remote_state(state) == remote
    if fits and remote:
        saved = state["remote_runners"]
        fits = isinstance(saved, list) and len(saved) == runner.num_runners
    if not fits:
        saved = len(state["remote_runners"]) if _is_remote_state(state) else 0
        path = _RESTORING.get()
        warn(f"{'' if path is None else f'{path}: '}the saved env runner state is of "
             f"num_env_runners={saved}, this algorithm has {runner.num_runners if remote else 0}: "
             "its episodes restart")
    return fits


def build_env_runners(config: AlgorithmConfig, policies: Mapping[str, Any],
                      mapping_fn: Callable[..., Any] | None,
                      pm: pluggy.PluginManager | None, first_env: Any = None) -> EnvRunner | RemoteEnvRunners:
    """The algorithm's sampling: an in-process :class:`EnvRunner` (N = 0), else N Ray actors.

    :param first_env: an env built for the config and never reset, that an in-process runner
        uses as its first copy (closed here otherwise).
    """
    from amber.envs.env_runner import EnvRunner

    if not config.num_env_runners:
        return EnvRunner(config.env, config.env_config, config.num_envs_per_env_runner, policies,
                         mapping_fn, seed=config.seed, pm=pm, first_env=first_env)
    if first_env is not None:
        first_env.close()
    return RemoteEnvRunners(config, policies, mapping_fn,
                            restart_failed=bool(getattr(config, "restart_failed_env_runners", True)))


def _policy_spec(policy: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    return type(policy), policy.observation_space, policy.action_space, dict(policy.config)


class RunnerWorker:
    """The body of one remote env runner (made a Ray actor by :class:`RemoteEnvRunners`)."""

    def __init__(self, env: Any, env_config: Mapping[str, Any], num_envs: int,
                 specs: Mapping[str, Any], mapping_fn: Callable[..., Any] | None, seed: int | None,
                 index: int, creators: Mapping[str, Callable[..., Any]]) -> None:
        from amber.envs.env_runner import EnvRunner
        from amber.envs.registry import env_context, register_env

        for name, creator in creators.items():
            register_env(name, creator)
        self.index = index
        self.policies: dict[str, Any] = {}
        self._build(specs)
        runner_seed = None if seed is None else int(seed) + index * int(num_envs)
        env_config = env_context(env_config, worker_index=index)  # num_workers: the config's
        self.runner = EnvRunner(env, env_config, num_envs, self.policies, mapping_fn, seed=runner_seed)
        self.runner.worker_index = index

    def _build(self, specs: Mapping[str, Any]) -> None:
        for pid in [p for p in self.policies if p not in specs]:
            del self.policies[pid]
        for pid, (cls, obs_space, act_space, cfg) in specs.items():
            if pid not in self.policies:
                self.policies[pid] = policy = cls(obs_space, act_space, cfg)
                reseed(policy, self.index)

    def ping(self) -> int:
        """This runner's index (the actor is up)."""
        return self.index

    def set_policies(self, specs: Mapping[str, Any], mapping_fn: Callable[..., Any] | None) -> None:
        """Build policies added since, drop those removed, use the new mapping."""
        self._build(specs)
        self.runner.set_policies(self.policies, mapping_fn)

    def sample(self, weights: Mapping[str, Any], num_env_steps: int, explore: bool,
               exact: bool = False) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
        """Load the learner's weights, sample (:meth:`EnvRunner.sample`); also return each policy's
        timesteps acted on."""
        for pid, w in weights.items():
            policy = self.policies.get(pid)
            if policy is not None:
                policy.set_weights(w["weights"])
                if hasattr(policy, "global_timestep"):
                    policy.global_timestep = int(w["global_timestep"])
        before = {pid: int(getattr(p, "global_timestep", 0)) for pid, p in self.policies.items()}
        fragments, metrics = self.runner.sample(num_env_steps, explore=explore, exact=exact)
        acted = {pid: int(getattr(p, "global_timestep", 0)) - before[pid] for pid, p in self.policies.items()}
        return fragments, metrics, acted

    def get_state(self) -> dict[str, Any]:
        """The env runner's state (envs, running episodes) and the policies' action generators."""
        gens = {pid: {name: generator_state(g) for name, g in policy_generators(p).items()}
                for pid, p in self.policies.items()}
        return {"env_runner": self.runner.get_state(), "generators": gens}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output (generators of policies absent here, or of the other
        framework, are skipped)."""
        gens = state["generators"]
        if not isinstance(gens, Mapping):
            raise InvalidStateError(f"env runner {self.index} state: 'generators' must be a map")
        self.runner.set_state(state["env_runner"])
        set_policy_generators(self.policies, gens, f"env runner {self.index}")

    def stop(self) -> None:
        """Close the env copies."""
        self.runner.stop()


def _shares(num_env_steps: int, num_runners: int, exact: bool) -> list[int]:
    """The env steps each runner samples (see :meth:`RemoteEnvRunners.sample`)."""
    if not exact:
        return [-(-num_env_steps // num_runners)] * num_runners
    base, extra = divmod(max(num_env_steps, 0), num_runners)
    return [base + (i < extra) for i in range(num_runners)]


class EnvRunnerDiedError(RuntimeError):
    """A remote env runner's actor died (and was not, or could not be, rebuilt): the runner's own
    error, never the fault of a checkpoint being restored (:func:`runner_deaths_pass`)."""


@contextmanager
def runner_deaths_pass() -> Iterator[None]:
    """Around ``state_errors``: a runner that died while a state was applied is raised as itself
    (:class:`EnvRunnerDiedError`), not as a checkpoint that does not fit."""
    try:
        yield
    except InvalidStateError as e:
        if isinstance(e.__cause__, EnvRunnerDiedError):
            raise e.__cause__ from e.__cause__.__cause__
        raise


class RemoteEnvRunners:
    """N env runners as Ray actors, sampled in parallel; the algorithm's ``env_runner`` when N > 0.

    :param config: the algorithm's config (env, seed, ``num_env_runners``, ``num_envs_per_env_runner``).
    :param policies: the learner's policies by id (the dict is used as given: the weights sent
        are theirs, and the timesteps the runners act on are added to theirs).
    :param mapping_fn: the multi-agent policy mapping function (None: single-agent).
    :param restart_failed: rebuild a runner whose actor died and sample its share again
        (False: raise).
    """

    def __init__(self, config: AlgorithmConfig, policies: Mapping[str, Any],
                 mapping_fn: Callable[..., Any] | None, *, restart_failed: bool = True) -> None:
        from amber.envs.registry import _CREATORS, env_context  # a registered env's creator goes along

        self.num_runners = int(config.num_env_runners)
        self._ray = ray = ensure_ray(self.num_runners)
        cpus = float(getattr(config, "num_cpus_per_env_runner", 1.0))
        self._actor_class = ray.remote(num_cpus=cpus, max_restarts=0)(RunnerWorker)
        if self.num_runners * cpus > ray.cluster_resources().get("CPU", 0):
            warn(f"{self.num_runners} env runners of {cpus} CPUs each need more CPUs than this Ray "
                 f"cluster has ({ray.cluster_resources().get('CPU', 0)}): they wait for more "
                 "(lower num_cpus_per_env_runner, e.g. 0.5)")
        env = config.env
        creators = {env: _CREATORS[env]} if isinstance(env, str) and env in _CREATORS else {}
        context = env_context(config.env_config, num_workers=self.num_runners)
        self._args = (env, context, int(config.num_envs_per_env_runner))
        self._seed, self._creators = config.seed, creators
        self.restart_failed = restart_failed
        self.num_restarts = 0
        self._weights: Any = None
        self.policies, self.policy_mapping_fn = policies, mapping_fn
        self.actors = [self._make(i) for i in range(1, self.num_runners + 1)]
        self._gather(lambda i: self.actors[i].ping.remote())  # a runner that cannot be built fails here

    def _make(self, index: int) -> Any:
        specs = {pid: _policy_spec(p) for pid, p in self.policies.items()}
        return self._actor_class.remote(*self._args, specs, self.policy_mapping_fn, self._seed, index,
                                        self._creators)

    def _gather(self, call: Callable[[int], Any]) -> list[Any]:
        """``ray.get(call(i))`` for every runner, started together; a dead runner is rebuilt and
        called again (up to :data:`MAX_RESTARTS_PER_CALL` times) when ``restart_failed``."""
        from ray.exceptions import RayActorError

        refs = [call(i) for i in range(self.num_runners)]
        out = []
        for i, ref in enumerate(refs):
            for attempt in range(MAX_RESTARTS_PER_CALL + 1):
                try:
                    out.append(self._ray.get(ref))
                    break
                except RayActorError as e:
                    missing = missing_module(e)
                    if missing is not None or not self.restart_failed or attempt == MAX_RESTARTS_PER_CALL:
                        message = died_message(i + 1, e, missing, self.restart_failed, attempt)
                        raise EnvRunnerDiedError(message) from e
                    self._ray.kill(self.actors[i])
                    self.actors[i] = self._make(i + 1)
                    self.num_restarts += 1
                    ref = call(i)
        return out

    def sync_weights(self) -> None:
        """Put the learner's weights (and timestep counters) in the object store, once, for every runner."""
        self._weights = self._ray.put({pid: {"weights": p.get_weights(),
                                             "global_timestep": int(getattr(p, "global_timestep", 0))}
                                       for pid, p in self.policies.items()})

    def set_policies(self, policies: Mapping[str, Any], policy_mapping_fn: Callable[..., Any] | None) -> None:
        """Use new policies and mapping (after adding or removing a policy): on every runner too."""
        self.policies, self.policy_mapping_fn = policies, policy_mapping_fn
        specs = {pid: _policy_spec(p) for pid, p in policies.items()}
        self._gather(lambda i: self.actors[i].set_policies.remote(specs, policy_mapping_fn))
        self.sync_weights()

    def sample(self, num_env_steps: int, *, explore: bool = True,
               exact: bool = False) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """Every runner samples its share at once, with the weights of the last :meth:`sync_weights`;
        their fragments and metrics merged in runner order (:meth:`EnvRunner.sample`'s form; episode
        ids made unique across runners).

        :param exact: sample exactly ``num_env_steps`` env steps: runner ``i`` (1..N) samples exactly
            ``num_env_steps // N``, plus one for the first ``num_env_steps % N`` runners (False: each
            samples at least ``ceil(num_env_steps / N)``).
        """
        if self._weights is None:
            self.sync_weights()
        weights, shares = self._weights, _shares(int(num_env_steps), self.num_runners, exact)
        results = self._gather(lambda i: self.actors[i].sample.remote(weights, shares[i], explore, exact))
        out: dict[str, list[Any]] = {}
        metrics: dict[str, Any] = {"episode_returns": [], "episode_lengths": [], "agent_episode_returns": {},
                                   "num_env_steps": 0, "num_agent_steps": 0}
        for i, (fragments, m, acted) in enumerate(results):
            for pid, frags in fragments.items():
                for frag in frags:
                    frag["eps_id"] = frag["eps_id"] * self.num_runners + i
                out.setdefault(pid, []).extend(frags)
            metrics["episode_returns"] += m["episode_returns"]
            metrics["episode_lengths"] += m["episode_lengths"]
            for pid, rets in m["agent_episode_returns"].items():
                metrics["agent_episode_returns"].setdefault(pid, []).extend(rets)
            metrics["num_env_steps"] += m["num_env_steps"]
            metrics["num_agent_steps"] += m["num_agent_steps"]
            for pid, n in acted.items():
                if pid in self.policies and hasattr(self.policies[pid], "global_timestep"):
                    self.policies[pid].global_timestep += n
        return out, metrics

    def get_state(self) -> dict[str, Any]:
        """Every runner's state (envs, running episodes, action generators), in runner order."""
        return {"remote_runners": self._gather(lambda i: self.actors[i].get_state.remote())}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output to the runners (runner ``i`` takes saved runner ``i``'s).

        :raises InvalidStateError: the state is not of N remote runners, or holds a generator state
            of no generator's kind (:func:`~amber.envs.runner_generators.checked_runner_states`).
        """
        runners = state.get("remote_runners") if isinstance(state, Mapping) else None
        if not isinstance(runners, list) or len(runners) != self.num_runners:
            raise InvalidStateError(f"the env runner state is not that of {self.num_runners} remote runners")
        runners, foreign = checked_runner_states(self.policies, runners)
        if foreign:
            path = _RESTORING.get()
            warn(f"{'' if path is None else f'{path}: '}the env runners' saved action generators of "
                 f"{', '.join(map(repr, foreign))} are another framework's: each runner keeps its own, "
                 "seeded from the policy's seed")
        self._gather(lambda i: self.actors[i].set_state.remote(runners[i]))

    def stop(self) -> None:
        """Close the runners' envs and end the actors (nothing to do once Ray was shut down: the
        actors went with it; an actor already gone is passed over)."""
        actors, self.actors = self.actors, []
        if not self._ray.is_initialized():
            return
        for actor in actors:
            try:
                self._ray.get(actor.stop.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead or stuck runner is ended all the same
                pass
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
