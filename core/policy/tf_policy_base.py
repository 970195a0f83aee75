"""What every amber tf2 policy shares: :class:`TFPolicyBase`.

A tf2 policy is a Keras model, its Keras Adam optimizer(s), a numpy generator
that draws its actions, and two counters. Its state tree has the layout of a
torch policy's (:mod:`amber.policy.torch_policy_base`), so checkpoints of
either framework read alike and each restores the other's weights::

    policy_spec       class, spaces and portable config
    weights           torch's names and layout: ``pi.0.weight`` [out, in], ``pi.0.bias``...
    optimizer         Adam's state as torch's state_dict tree: ``state[i]`` holds ``step``,
                      ``exp_avg``, ``exp_avg_sq`` for parameter ``i`` (torch's order and
                      layout); ``param_groups[0]`` holds ``lr``, ``betas``, ``eps``
    optimizers        {name: that tree}                        (policies with several: SAC)
    <generator name>  each numpy PCG64 generator's state, uint8[40] ("generator"; SAC's "learner_generator")
    global_timestep, num_grad_updates
    framework         "tf2" (a torch policy's state has no such key)

Nothing of TensorFlow is pickled: every value is a numpy array, a number or
a string. Importing this module imports numpy only; building a policy imports
tensorflow and keras (:func:`amber.models.keras_mlp.tf_runtime`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np

from amber.errors import warn
from amber.models.build_budget import adopting, restoring
from amber.models.keras_mlp import tf_runtime
from amber.policy.numpy_generators import generator_from_bytes, generator_to_bytes
from amber.policy.optimizer_trees import check_optimizer_tree
from amber.policy.policy import (
    Policy,
    checked_obs_batch,
    init_action_facts,
    optimizer_entries,
    saved_optimizers,
)
from amber.policy.policy_helpers import check_no_unknown_weights, policy_seeds
from amber.policy.spaces import space_to_state

__all__ = ["TFPolicyBase", "generator_from_bytes", "generator_to_bytes"]

P = TypeVar("P", bound="TFPolicyBase")



class TFPolicyBase(Policy):
    """A tf2 policy over Box or Discrete spaces: seeding, weights, Adam, state (see the module docstring).

    :param config: the policy's config (``model``, ``lr``, ``seed``...), kept whole as :attr:`config`.
    """

    #: The framework (``export_model`` writes its native files: a SavedModel and ``model.keras``).
    framework: ClassVar[str] = "tf2"
    #: The numpy generators, by attribute name (and state key), seeded after the model's init seed.
    GENERATORS: ClassVar[tuple[str, ...]] = ("generator",)
    #: The optimizers by name; one is saved as ``state["optimizer"]``, several as ``state["optimizers"]``.
    OPTIMIZERS: ClassVar[tuple[str, ...]] = ("default",)
    #: Mixed into the user seed (as the torch policy of the same algorithm does).
    SEED_SALT: ClassVar[tuple[int, ...]] = ()

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        self.tf, self.keras = tf_runtime()
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = dict(config)
        n = 1 + len(self.GENERATORS)
        init_seed, *seeds = policy_seeds(self.config.get("seed"), n, salt=self.SEED_SALT)
        if self.config.get("seed") is not None:  # as torch.use_deterministic_algorithms for torch
            # Process-wide: TF then refuses random ops without a seed, so the global one is set too
            # (as RLlib does), for the user's own unseeded TF random ops (Keras fit's shuffles...).
            self.tf.random.set_seed(int(self.config["seed"]) % 2**31)
            self.tf.config.experimental.enable_op_determinism()
        self.model = self.make_model(None if restoring() else np.random.default_rng(init_seed))
        #: Draws the actions of :meth:`compute_actions` (numpy's PCG64, saved in the state).
        self.generator: np.random.Generator
        for name, seed in zip(self.GENERATORS, seeds, strict=True):
            setattr(self, name, np.random.Generator(np.random.PCG64(seed)))
        self._optimizers: dict[str, Any] = {}
        self._pending_optimizer_state: dict[str, Any] = {}
        self._exact_lr: dict[str, float] = {}  # each optimizer's restored learning rate (Keras keeps float32)
        init_action_facts(self, observation_space, action_space)
        #: Act on single observations in numpy (the weights' copy, refreshed when they change).
        self.fast_inference = True
        self._weights_version = 0
        self._np_cache: tuple[int, Any] | None = None

    def make_model(self, rng: np.random.Generator | None) -> Any:
        """The policy's Keras model, initialised from ``rng`` (None: a saved state will replace it)."""
        raise NotImplementedError

    def named_variables(self) -> list[tuple[str, Any]]:
        """``(torch name, tf.Variable)`` of every weight, in torch's parameter order."""
        return list(self.model.variables())

    def optimizer_variables(self, name: str) -> list[Any]:
        """The variables optimizer ``name`` updates, in torch's order (default: all of them)."""
        return [v for _, v in self.named_variables()]

    def weights_changed(self) -> None:
        """Mark the weights as changed (after an update or a restore): the numpy copy is rebuilt."""
        self._weights_version += 1

    # -- optimizers ------------------------------------------------------------

    def make_optimizer(self, name: str) -> Any:
        """A new optimizer ``name``: Keras Adam taking torch's step (:mod:`amber.policy.tf_adam`)
        with the config's ``lr`` and ``adam_epsilon``."""
        from amber.policy.tf_adam import torch_adam

        return torch_adam(self.keras, float(self.config.get("lr", 5e-5)),
                          float(self.config.get("adam_epsilon", 1e-8)))

    def get_optimizer(self, name: str) -> Any:
        """The optimizer ``name``, made and built on first use, with any restored state loaded.

        :raises KeyError: an unknown name.
        """
        opt = self._optimizers.get(name)
        if opt is None:
            if name not in self.OPTIMIZERS:
                raise KeyError(f"unknown optimizer {name!r}; {type(self).__name__} has "
                               f"{', '.join(self.OPTIMIZERS)}")
            opt = self._optimizers[name] = self.make_optimizer(name)
            opt.build(self.optimizer_variables(name))
            pending = self._pending_optimizer_state.pop(name, None)
            if pending is not None:
                self._load_optimizer(name, opt, pending)
        return opt

    @property
    def optimizer(self) -> Any:
        """The optimizer of a policy with one.

        :raises AttributeError: the policy has several (use :meth:`get_optimizer`).
        """
        if len(self.OPTIMIZERS) != 1:
            raise AttributeError(f"{type(self).__name__} has several optimizers: use get_optimizer(name)")
        return self.get_optimizer(self.OPTIMIZERS[0])

    def _optimizer_tree(self, name: str) -> Any:
        """Optimizer ``name``'s state as torch's Adam ``state_dict`` tree (see the module docstring)."""
        if name not in self._optimizers:
            if name in self._pending_optimizer_state:
                return copy.deepcopy(self._pending_optimizer_state[name])
        opt = self.get_optimizer(name)
        variables = self.optimizer_variables(name)
        lr = float(opt.learning_rate.numpy())  # float32: the float it was set from, where known
        known = (self._exact_lr.get(name), self.config.get(f"{name}_lr"), self.config.get("lr"))
        lr = next((float(c) for c in known if c is not None and np.float32(c) == np.float32(lr)), lr)
        group = {"lr": lr,
                 "betas": [float(opt.beta_1), float(opt.beta_2)], "eps": float(opt.epsilon),
                 "weight_decay": 0.0, "amsgrad": False, "params": list(range(len(variables)))}
        steps = int(opt.iterations.numpy())
        state: dict[int, Any] = {}
        if steps:
            by_ref = self._torch_layout(variables)
            for i, var in enumerate(variables):
                k = opt._get_variable_index(var)
                state[i] = {"step": np.array(float(steps), np.float32),
                            "exp_avg": by_ref[i](opt._momentums[k].numpy()),
                            "exp_avg_sq": by_ref[i](opt._velocities[k].numpy())}
        return {"state": state, "param_groups": [group]}

    def _torch_layout(self, variables: list[Any]) -> list[Any]:
        """Per variable, the function from its TF value to torch's layout (kernels transposed)."""
        return [(lambda a: np.ascontiguousarray(a.T)) if len(v.shape) == 2 else (lambda a: np.array(a))
                for v in variables]

    def _load_optimizer(self, name: str, opt: Any, tree: Mapping[str, Any]) -> None:
        """Load a torch-layout Adam tree (this framework's or torch's) into the built Keras Adam.

        A tree whose moments do not fit the parameters (another layout) resets the moments,
        with a warning: the weights are restored all the same.
        """
        groups = tree.get("param_groups") or [{}]
        if groups and "lr" in groups[0]:
            self._exact_lr[name] = float(groups[0]["lr"])
            opt.learning_rate.assign(self._exact_lr[name])
        saved = {int(k): v for k, v in dict(tree.get("state") or {}).items()}
        values = self._moments(opt, self.optimizer_variables(name), saved) if saved else None
        if saved and values is None:
            warn(f"{type(self).__name__}: the saved state of optimizer {name!r} does not fit its "
                 "parameters (another layout); its moments start again from zero")
        for k in range(len(opt._momentums)):
            m, v = values[k] if values is not None else (None, None)
            opt._momentums[k].assign(m if m is not None else np.zeros(opt._momentums[k].shape, np.float32))
            opt._velocities[k].assign(v if v is not None else np.zeros(opt._velocities[k].shape, np.float32))
        step = float(np.asarray(saved[min(saved)]["step"])) if values is not None else 0.0
        opt.iterations.assign(int(round(step)))

    @staticmethod
    def _moments(opt: Any, variables: list[Any], saved: Mapping[int, Any]) -> list[tuple[Any, Any]] | None:
        """Per variable (in Keras's slot order), ``(exp_avg, exp_avg_sq)`` in its layout; ``(None, None)``
        for a parameter torch kept no state for; None when the saved moments do not fit."""
        out: list[tuple[Any, Any]] = [(None, None)] * len(opt._momentums)
        if not set(saved) <= set(range(len(variables))):
            return None
        for i, var in enumerate(variables):
            entry = saved.get(i)
            if entry is None:
                continue
            pair = []
            for key in ("exp_avg", "exp_avg_sq"):
                if not isinstance(entry, Mapping) or key not in entry:
                    return None
                value = np.asarray(entry[key], np.float32)
                value = value.T if value.ndim == 2 else value
                if tuple(value.shape) != tuple(var.shape):
                    return None
                pair.append(value)
            out[opt._get_variable_index(var)] = (pair[0], pair[1])
        return out

    def _restore_optimizer(self, name: str, tree: Any) -> None:
        if name in self._optimizers:
            self._load_optimizer(name, self._optimizers[name], tree)
        else:  # kept until the optimizer is made: a copy, unless the restore gives it away
            self._pending_optimizer_state[name] = tree if adopting() else copy.deepcopy(tree)

    # -- arrays ------------------------------------------------------------------

    def obs_array(self, obs_batch: Any) -> np.ndarray:
        """A batch of observations as the model takes them: int64 (Discrete) or float32 (Box).

        :raises ValueError: not ``[batch, *obs_shape]`` (Discrete: ``[batch]``), e.g. one
            observation without its batch axis.
        """
        return checked_obs_batch(self, obs_batch)

    def actions_array(self, actions: Any) -> np.ndarray:
        """Env actions as the model's: int64 indices from 0, or float32 ``[batch, d]``."""
        if self._discrete_actions:
            return np.asarray(actions, dtype=np.int64) - self._action_offset
        arr = np.asarray(actions, dtype=np.float32)
        return arr.reshape(arr.shape[0], -1)

    # -- weights and state -------------------------------------------------------

    def get_weights(self) -> dict[str, np.ndarray]:
        """The weights as numpy copies in torch's names and layout (kernels ``[out, in]``)."""
        out = {}
        for name, var in self.named_variables():
            value = var.numpy()
            out[name] = np.ascontiguousarray(value.T) if value.ndim == 2 else value.copy()
        return out

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        """Load weights in torch's names and layout (a torch policy's or this one's :meth:`get_weights`).

        :raises KeyError: a weight is missing, or one is not the model's (named; nothing is changed).
        :raises ValueError: a weight's shape differs (nothing is changed then).
        """
        own = self.named_variables()
        check_no_unknown_weights(type(self).__name__, weights, [name for name, _ in own])
        missing = sorted(name for name, _ in own if name not in weights)
        if missing:
            raise KeyError(f"weights are missing {missing}")
        new, wrong = [], {}
        for name, var in own:
            value = np.asarray(weights[name], dtype=np.float32)
            expected = tuple(var.shape)[::-1] if len(var.shape) == 2 else tuple(var.shape)
            if value.shape != expected:
                wrong[name] = (value.shape, expected)
            new.append((var, value.T if value.ndim == 2 else value))
        if wrong:
            raise ValueError(f"weights: shapes differ (given, expected): {wrong}")
        for var, value in new:
            var.assign(value)
        self.weights_changed()

    def num_params(self) -> int:
        """The number of model parameters."""
        return sum(int(np.prod(v.shape)) for _, v in self.named_variables())

    def policy_spec_state(self) -> dict[str, Any]:
        """What :meth:`build_from_spec` needs: class, spaces and portable config."""
        from amber.policy.policy_helpers import portable_config

        return {"policy_class": type(self), "observation_space": space_to_state(self.observation_space),
                "action_space": space_to_state(self.action_space), "config": portable_config(self.config)}

    def get_state(self) -> dict[str, Any]:
        """The whole state (see the module docstring): torch's layout, plus ``framework``."""
        state: dict[str, Any] = {"policy_spec": self.policy_spec_state(), "weights": self.get_weights()}
        state.update(optimizer_entries(self.OPTIMIZERS, self._optimizer_tree))
        for name in self.GENERATORS:
            state[name] = generator_to_bytes(getattr(self, name))
        state["global_timestep"] = int(self.global_timestep)
        state["num_grad_updates"] = int(self.num_grad_updates)
        state["framework"] = self.framework
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply a state from :meth:`get_state`, or a torch policy's of the same algorithm (keys that
        are absent are left as they are; a torch generator's state is not this one's: it is left
        with a warning). The weights and optimizer states are checked before anything changes (an
        optimizer state's moments that do not fit the parameters start again, with a warning, when
        the optimizer is made).

        :raises ValueError: a weight's shape differs, or an optimizer state is malformed (named).
        """
        for name, tree in saved_optimizers(state, self.OPTIMIZERS).items():
            check_optimizer_tree(tree, name, None)
        if "weights" in state:
            self.set_weights(state["weights"])
        for name, tree in saved_optimizers(state, self.OPTIMIZERS).items():
            self._restore_optimizer(name, tree)
        for name in self.GENERATORS:
            if state.get(name) is None:
                continue
            rng = generator_from_bytes(state[name])
            if rng is None:
                warn(f"{type(self).__name__}: the saved {name} state is another framework's; "
                     "this policy keeps its own (its draws differ from the saved run's)")
            else:
                setattr(self, name, rng)
        if "global_timestep" in state:
            self.global_timestep = int(state["global_timestep"])
        if "num_grad_updates" in state:
            self.num_grad_updates = int(state["num_grad_updates"])

    @classmethod
    def build_from_spec(cls: type[P], spec: Mapping[str, Any]) -> P:
        """A policy to :meth:`set_state` into, from a ``policy_spec`` state (weights not initialised)."""
        from amber.policy.policy_helpers import build_from_spec

        return build_from_spec(cls, spec)
