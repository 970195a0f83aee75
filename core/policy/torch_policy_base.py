"""What every amber torch policy shares: :class:`TorchPolicyBase`.

A torch policy is a model, its optimizer(s), its generators and two counters.
Everything that decides what it does next is in :meth:`TorchPolicyBase.get_state`,
so a policy restored from a checkpoint acts and trains bit-identically to the
original. The state tree::

    policy_spec       class, spaces and portable config (what build_from_spec needs)
    weights           the model's state_dict, numpy float32, by parameter name
    optimizer         one optimizer's state_dict as a tree            (policies with one)
    optimizers        {name: that tree}                               (policies with several: SAC)
    <generator name>  each generator's state, uint8 (GENERATORS: "generator", SAC's "learner_generator")
    global_timestep, num_grad_updates

Subclasses add their model (:meth:`~TorchPolicyBase.make_model`), acting, the
numpy network of their fast path (:meth:`~TorchPolicyBase.build_numpy_net`),
export, and any state of their own (DQN's target network).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from amber.errors import warn
from amber.policy.optimizer_trees import check_optimizer_tree
from amber.policy.policy import (
    Policy,
    checked_obs_batch,
    init_action_facts,
    optimizer_entries,
    saved_optimizers,
)
from amber.policy.policy_helpers import check_no_unknown_weights
from amber.policy.spaces import space_to_state
from amber.policy.torch_utils import (
    adopting,
    build_from_spec,
    checked_weights,
    copy_weights,
    optimizer_state_from_tree,
    optimizer_state_to_tree,
    policy_seeds,
    portable_config,
    weights_of,
)

__all__ = ["TorchPolicyBase"]

P = TypeVar("P", bound="TorchPolicyBase")


class TorchPolicyBase(Policy):
    """A torch policy over Box or Discrete spaces: seeding, weights, optimizers, state, the fast-path hook.

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Box or Discrete space.
    :param config: the policy's config (``model``, ``lr``, ``seed``...), kept whole as :attr:`config`.
    """

    #: The generators, by attribute name (and state key), seeded after the model's init seed.
    GENERATORS: ClassVar[tuple[str, ...]] = ("generator",)
    #: The optimizers by name, made on first use by :meth:`make_optimizer`. One is saved as
    #: ``state["optimizer"]``, several as ``state["optimizers"][name]``.
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("default",)
    #: Mixed into the user seed (:func:`~amber.policy.torch_utils.policy_seeds`).
    SEED_SALT: ClassVar[tuple[int, ...]] = ()

    model: torch.nn.Module
    #: Draws the actions of :meth:`compute_actions` (every policy has it).
    generator: torch.Generator

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:

        self.observation_space = observation_space
        self.action_space = action_space
        self.config = dict(config)
        n = 1 + len(self.GENERATORS)
        init_seed, *seeds = policy_seeds(self.config.get("seed"), n, salt=self.SEED_SALT)
        with torch.random.fork_rng(devices=[]):  # building nn.Linear draws from the global RNG
            self.model = self.make_model(torch.Generator().manual_seed(init_seed))
        for name, seed in zip(self.GENERATORS, seeds, strict=True):
            setattr(self, name, torch.Generator().manual_seed(seed))
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._pending_optimizer_state: dict[str, Any] = {}  # restored before the optimizer was made
        #: global_timestep: timesteps acted on (DQN: with exploration, its epsilon schedule's clock).
        init_action_facts(self, observation_space, action_space)
        #: Act on single observations with the numpy fast path (see :meth:`numpy_net`).
        self.fast_inference = True
        self._np_cache: tuple[tuple[Any, ...], list[torch.Tensor], list[int], Any] | None = None

    def make_model(self, generator: torch.Generator) -> torch.nn.Module:
        """The policy's model, initialised from ``generator`` (subclasses build theirs)."""
        raise NotImplementedError

    # -- optimizers ----------------------------------------------------------

    def make_optimizer(self, name: str) -> torch.optim.Optimizer:
        """A new optimizer ``name``: by default Adam over the model's parameters with the config's
        ``lr`` and ``adam_epsilon``."""
        return torch.optim.Adam(self.model.parameters(), lr=float(self.config.get("lr", 5e-5)),
                                eps=float(self.config.get("adam_epsilon", 1e-8)), fused=True)

    def get_optimizer(self, name: str) -> torch.optim.Optimizer:
        """The optimizer ``name``, made on first use (serving never needs one: making it costs
        seconds of imports), with any restored state loaded into it.

        :raises KeyError: an unknown name.
        """
        opt = self._optimizers.get(name)
        if opt is None:
            if name not in self.OPTIMIZERS:
                raise KeyError(f"unknown optimizer {name!r}; {type(self).__name__} has "
                               f"{', '.join(self.OPTIMIZERS)}")
            opt = self._optimizers[name] = self.make_optimizer(name)
            pending = self._pending_optimizer_state.pop(name, None)
            if pending is not None:
                opt.load_state_dict(optimizer_state_from_tree(pending))
        return opt

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of a policy with one.

        :raises AttributeError: the policy has several (use :meth:`get_optimizer`).
        """
        if len(self.OPTIMIZERS) != 1:
            raise AttributeError(f"{type(self).__name__} has several optimizers: use get_optimizer(name)")
        return self.get_optimizer(self.OPTIMIZERS[0])

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer by name (made if needed)."""
        return {name: self.get_optimizer(name) for name in self.OPTIMIZERS}

    def _optimizer_tree(self, name: str) -> Any:
        if name not in self._optimizers and name in self._pending_optimizer_state:
            return copy.deepcopy(self._pending_optimizer_state[name])
        return optimizer_state_to_tree(self.get_optimizer(name).state_dict())

    def _checked_optimizer_tree(self, name: str, tree: Any) -> Any:
        """Optimizer ``name``'s saved tree, checked against the optimizer it goes into: its param
        groups, their parameters and every buffer's shape (:func:`check_optimizer_tree`). The
        default optimizer is not made for this (serving never makes one): its one group holds the
        model's parameters. A subclass's (:meth:`make_optimizer` overridden) is made now.

        :raises ValueError: the tree does not fit (named).
        """
        opt = self._optimizers.get(name)
        if opt is None and type(self).make_optimizer is not TorchPolicyBase.make_optimizer:
            opt = self.get_optimizer(name)
        if opt is None:
            shapes = [[tuple(p.shape) for p in self.model.parameters()]]
        else:
            shapes = [[tuple(p.shape) for p in group["params"]] for group in opt.param_groups]
        check_optimizer_tree(tree, name, shapes)
        return tree

    def _restore_optimizer(self, name: str, tree: Any) -> None:
        if name in self._optimizers:
            self._optimizers[name].load_state_dict(optimizer_state_from_tree(tree))
        else:  # kept until the optimizer is made: a copy, unless the restore gives it away
            self._pending_optimizer_state[name] = tree if adopting() else copy.deepcopy(tree)

    # -- tensors -------------------------------------------------------------

    def obs_array(self, obs_batch: Any) -> np.ndarray:
        """A batch of observations as the model takes them: int64 (Discrete) or float32 (Box).

        :raises ValueError: not ``[batch, *obs_shape]`` (Discrete: ``[batch]``), e.g. one
            observation without its batch axis.
        """
        return checked_obs_batch(self, obs_batch)

    def obs_to_tensor(self, obs_batch: Any) -> torch.Tensor:
        """A batch of observations as the model's input tensor (int64 for Discrete, else float32)."""
        arr = self.obs_array(obs_batch)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())

    def actions_to_tensor(self, actions: Any) -> torch.Tensor:
        """Env actions as the model's: int64 indices from 0, or float32 ``[batch, d]``."""
        if self._discrete_actions:
            arr = np.asarray(actions, dtype=np.int64)
            if self._action_offset:
                arr = arr - self._action_offset
        else:
            arr = np.asarray(actions, dtype=np.float32)
            arr = arr.reshape(arr.shape[0], -1)
        return torch.from_numpy(np.array(arr, copy=not arr.flags.writeable))

    # -- the numpy fast path ---------------------------------------------------

    def numpy_modules(self) -> tuple[torch.nn.Module, ...]:
        """The modules the fast path runs, whose parameters it watches (see :meth:`numpy_net`)."""
        return tuple(self.model.children())

    def build_numpy_net(self) -> Any:
        """The fast path's network as numpy views of the parameters
        (:mod:`amber.models.numpy_mlp`), or None when it cannot run in numpy."""
        return None

    def numpy_net(self, arr: np.ndarray) -> Any:
        """:meth:`build_numpy_net`'s network, cached, when ``arr`` is one observation and
        :attr:`fast_inference` is on; else None (act in torch).

        Its arrays share memory with the parameters, so in-place updates (optimizer
        steps, :meth:`set_weights`, :meth:`set_state`, ``load_state_dict``) are seen at
        once; it is rebuilt when a module of the model was replaced, or the storage of a
        parameter of :meth:`numpy_modules` (``p.data = ...``, ``.to()``). Forward hooks
        anywhere in the model: None.
        """
        if arr.shape[:1] != (1,) or not self.fast_inference:
            return None
        model = self.model
        key = (model, *model._modules.values())
        cache = self._np_cache
        if cache is not None and cache[0] == key and [p.data_ptr() for p in cache[1]] == cache[2]:
            return cache[3]
        self._np_cache = None
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return None
        net = self.build_numpy_net()
        if net is not None:
            params = [p for m in self.numpy_modules() for p in m.parameters()]
            self._np_cache = (key, params, [p.data_ptr() for p in params], net)
        return net

    # -- weights and state ---------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """The model's weights as numpy copies, by parameter name."""
        return weights_of(self.model)

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy weights returned by :meth:`get_weights` into the model (in place).

        :raises KeyError: a weight is missing, or one is not the model's (named; nothing is copied).
        :raises ValueError: a weight's shape differs (nothing is copied then).
        """
        check_no_unknown_weights(type(self).__name__, weights, self.model.state_dict())
        copy_weights(checked_weights(self.model, weights))

    def num_params(self) -> int:
        """The number of model parameters."""
        return sum(p.numel() for p in self.model.parameters())

    def policy_spec_state(self) -> dict[str, Any]:
        """What :meth:`build_from_spec` needs: class, spaces and portable config."""
        return {
            "policy_class": type(self),
            "observation_space": space_to_state(self.observation_space),
            "action_space": space_to_state(self.action_space),
            "config": portable_config(self.config),
        }

    def get_state(self) -> dict[str, Any]:
        """The whole state: spec, weights, optimizer(s), generators, counters (see the module docstring)."""
        state: dict[str, Any] = {"policy_spec": self.policy_spec_state(), "weights": self.get_weights()}
        state.update(optimizer_entries(self.OPTIMIZERS, self._optimizer_tree))
        for name in self.GENERATORS:
            state[name] = getattr(self, name).get_state().numpy().copy()
        state["global_timestep"] = int(self.global_timestep)
        state["num_grad_updates"] = int(self.num_grad_updates)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply a state from :meth:`get_state` (keys that are absent are left as they are).

        The weights, optimizer states and generator states are checked before anything changes
        (an optimizer's against its param groups and parameters' shapes). A generator state
        of another framework (a tf2 policy's: not torch's size) is left, with a warning: this policy
        keeps its own generator.

        :raises ValueError: a weight's shape differs, an optimizer state does not fit its optimizer,
            or a generator state of torch's size is not valid.
        """
        weights = checked_weights(self.model, state["weights"]) if "weights" in state else []
        generators = {name: self._saved_generator(name, state[name])
                      for name in self.GENERATORS if state.get(name) is not None}
        optimizers = {name: self._checked_optimizer_tree(name, tree)
                      for name, tree in saved_optimizers(state, self.OPTIMIZERS).items()}
        copy_weights(weights)
        for name, tree in optimizers.items():
            self._restore_optimizer(name, tree)
        for name, raw in generators.items():
            if raw is not None:
                getattr(self, name).set_state(raw)
        if "global_timestep" in state:
            self.global_timestep = int(state["global_timestep"])
        if "num_grad_updates" in state:
            self.num_grad_updates = int(state["num_grad_updates"])

    def _saved_generator(self, name: str, value: Any) -> torch.Tensor | None:
        """Generator ``name``'s saved state as the tensor torch restores, checked on a scratch
        generator; None (with a warning) when it is another framework's (not torch's size)."""
        raw = torch.from_numpy(np.array(np.asarray(value, dtype=np.uint8).ravel(), copy=True))
        if raw.numel() != getattr(self, name).get_state().numel():
            warn(f"{type(self).__name__}: the saved {name} state is another framework's; "
                 "this policy keeps its own (its draws differ from the saved run's)")
            return None
        try:
            torch.Generator().set_state(raw)
        except RuntimeError as e:
            raise ValueError(f"the saved {name} state is not a valid torch generator state: {e}") from e
        return raw

    @classmethod
    def build_from_spec(cls: type[P], spec: Mapping[str, Any]) -> P:
        """A policy to :meth:`set_state` into, from a ``policy_spec`` state (spaces as states or
        as spaces). Its weights are not initialised: the state's replace them."""
        return build_from_spec(cls, spec)
