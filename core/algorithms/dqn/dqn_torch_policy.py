"""DQN's torch policy: a Q network (dueling or not), its target copy, epsilon-greedy acting.

Everything that decides what the policy does next is in
:meth:`DQNTorchPolicy.get_state`: the Q weights, the target network's
weights, the Adam state, the generator that draws exploration, and the
counters (``global_timestep`` drives the epsilon schedule), so a restored
policy acts and learns bit-identically to the original.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from amber.algorithms.dqn.dqn_common import (
    dqn_epsilon_schedule,
    epsilon_at,
    epsilon_greedy,
    q_actions_result,
    validate_epsilon_schedule,
)
from amber.models.numpy_mlp import NumpyMLP, Preprocess
from amber.models.torch_mlp import (
    DEFAULT_MODEL_CONFIG,
    ObsPreprocessor,
    build_mlp,
    get_activation,
    train_forward,
)
from amber.policy.policy import BATCH_EXTRAS, check_extra_kwargs
from amber.policy.torch_policy_base import TorchPolicyBase
from amber.policy.torch_utils import action_info, checked_weights, copy_weights, threads_for_batch, weights_of
from amber.snapshots import wait_for_snapshot

__all__ = ["DQNTorchModel", "DQNTorchPolicy", "dqn_epsilon_schedule", "epsilon_at",
           "validate_epsilon_schedule"]


def _trunk(in_dim: int, hiddens: Sequence[int], activation: str | None,
           generator: torch.Generator | None) -> nn.Sequential:
    """Linear+activation layers for ``hiddens`` (empty: the identity)."""
    if not hiddens:
        return nn.Sequential()
    act = get_activation(activation)
    gain = 2.0 ** 0.5 if act is not None else 1.0
    net = build_mlp(in_dim, list(hiddens[:-1]), activation, hiddens[-1], out_gain=gain, generator=generator)
    if act is not None:
        net.append(act())
    return net


class DQNTorchModel(nn.Module):
    """Q-values from a fully connected trunk and a dueling (value + advantage) or plain Q head.

    Dueling: ``Q = V + A - mean(A)`` (RLlib's dueling head). Each head has ``hiddens`` relu
    layers, then a linear one. ``forward(obs)`` returns the Q-values, ``[batch, num_actions]``.
    """

    def __init__(self, observation_space: Any, num_actions: int,
                 model_config: Mapping[str, Any] | None = None, *, dueling: bool = True,
                 hiddens: Sequence[int] = (), generator: torch.Generator | None = None) -> None:
        """Build the model.

        :param model_config: RLlib's model config (``fcnet_hiddens``, ``fcnet_activation``).
        :param dueling: value and advantage heads (True) or one Q head.
        :param hiddens: sizes of each head's relu layers before its output layer.
        :param generator: the RNG for initialization (the global one when None).
        """
        super().__init__()
        cfg = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
        trunk = [int(h) for h in cfg["fcnet_hiddens"] or []]
        head = [int(h) for h in hiddens or []]
        self.dueling = bool(dueling)
        self.num_actions = int(num_actions)
        self.preprocessor = ObsPreprocessor(observation_space)
        self.trunk = _trunk(self.preprocessor.out_dim, trunk, cfg["fcnet_activation"], generator)
        width = trunk[-1] if trunk else self.preprocessor.out_dim
        if self.dueling:
            self.value = build_mlp(width, head, "relu", 1, generator=generator)
            self.advantage = build_mlp(width, head, "relu", self.num_actions, generator=generator)
        else:
            self.q = build_mlp(width, head, "relu", self.num_actions, generator=generator)

    @staticmethod
    def _head(net: nn.Sequential, h: torch.Tensor, train: bool) -> torch.Tensor:
        if len(net) == 1:  # one linear layer: without Module-call overhead
            layer = cast(nn.Linear, net[0])
            return nn.functional.linear(h, layer.weight, layer.bias)
        return train_forward(net, h) if train else net(h)

    def heads(self, h: torch.Tensor, *, train: bool = False) -> torch.Tensor:
        """Q-values from trunk features."""
        if self.dueling:
            adv = self._head(self.advantage, h, train)
            return self._head(self.value, h, train) + adv - adv.mean(dim=1, keepdim=True)
        return self._head(self.q, h, train)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q-values ``[batch, num_actions]`` for a batch of observations."""
        return self.heads(self.trunk(self.preprocessor(obs)))

    def train_q(self, obs: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for training: the trunk as one fused autograd node (see ``train_forward``)."""
        return self.heads(train_forward(self.trunk, self.preprocessor(obs)), train=True)


class DQNTorchPolicy(TorchPolicyBase):
    """A DQN policy over Discrete actions (Box or Discrete observations).

    :param observation_space: a gymnasium Box or Discrete space.
    :param action_space: a gymnasium Discrete space.
    :param config: ``model``, ``lr``, ``seed``, ``grad_clip``, ``gamma`` and DQN's
        ``dueling``, ``hiddens`` (the Q head's relu layers), ``double_q``, ``n_step`` and
        ``epsilon`` (schedule); kept whole as :attr:`config`.
    :raises ValueError: an action space that is not Discrete.

    Seeding, the Adam optimizer, weights and state are
    :class:`~amber.policy.torch_policy_base.TorchPolicyBase`'s; the Q model, its
    target copy, epsilon-greedy acting, the kept flat Adam and export are its own.
    :attr:`global_timestep` counts the timesteps acted on with exploration: the
    epsilon schedule's clock.
    """

    model: DQNTorchModel

    def __init__(self, observation_space: Any, action_space: Any, config: Mapping[str, Any]) -> None:
        self.epsilon_schedule = dqn_epsilon_schedule(action_space, config)
        super().__init__(observation_space, action_space, config)
        self.target_model = copy.deepcopy(self.model).requires_grad_(False)
        self._flat_adam: Any = None
        self._flat_adam_modules: tuple[nn.Module | None, ...] | None = None

    def make_model(self, generator: torch.Generator) -> DQNTorchModel:
        """:class:`DQNTorchModel` from the config's ``model``, ``dueling`` and ``hiddens``."""
        return DQNTorchModel(self.observation_space, int(self.action_space.n), self.config.get("model") or {},
                             dueling=bool(self.config.get("dueling", True)),
                             hiddens=[int(h) for h in self.config.get("hiddens") or []], generator=generator)

    # -- acting ----------------------------------------------------------------------

    @property
    def cur_epsilon(self) -> float:
        """The exploration rate for the next explored timestep."""
        return epsilon_at(self.epsilon_schedule, self.global_timestep)

    def compute_q_values(self, obs_batch: Any) -> np.ndarray:
        """The Q network's outputs for a batch of observations, float32 ``[batch, num_actions]``."""
        arr = self.obs_array(obs_batch)
        net = self.numpy_net(arr)
        if net is not None:
            preprocess, trunk, heads = net
            h = trunk(preprocess(arr))
            if self.model.dueling:
                v, a = heads[0](h), heads[1](h)
                return (v + a - a.mean(axis=1, keepdims=True)).astype(np.float32, copy=False)
            return heads[0](h).astype(np.float32, copy=False)
        obs = self.obs_to_tensor(arr)
        with threads_for_batch(obs.shape[0]), torch.inference_mode():
            return self.model(obs).numpy()

    def compute_actions(
        self, obs_batch: Any, state_batches: Any = None, *, explore: bool | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, list[Any], dict[str, np.ndarray]]:
        """Epsilon-greedy actions (explore True or None) or greedy ones: ``(actions, [], extra)``.

        Exploring draws, per observation, one uniform number from :attr:`generator`
        deciding whether to act at random, and one picking the random action;
        each explored observation advances :attr:`global_timestep` (the
        epsilon schedule's clock). ``extra`` holds ``q_values`` and
        ``action_dist_inputs`` (the same Q-values).
        """
        check_extra_kwargs(type(self).__name__, "compute_actions", kwargs, BATCH_EXTRAS,
                           ("obs_batch", "state_batches", "explore"))
        q = self.compute_q_values(obs_batch)
        actions = q.argmax(axis=-1).astype(np.int64)
        if explore is None or explore:
            u = torch.rand((len(actions), 2), generator=self.generator, dtype=torch.float64).numpy()
            actions = epsilon_greedy(self, actions, u)
        return q_actions_result(self, actions, q)

    def compute_values(self, obs_batch: Any) -> np.ndarray:
        """DQN policies have no separate value function.

        :raises NotImplementedError: always.
        """
        raise NotImplementedError("a DQN policy has no value function; use compute_q_values")

    def build_numpy_net(self) -> tuple[Preprocess, NumpyMLP, list[NumpyMLP]] | None:
        """``(preprocess, trunk, heads)`` in numpy (heads: value and advantage, or Q), or None."""
        model = self.model
        if type(model) is not DQNTorchModel:
            return None
        trunk = NumpyMLP.from_torch(model.trunk)
        heads = [NumpyMLP.from_torch(net) for net in
                 ((model.value, model.advantage) if model.dueling else (model.q,))]
        if trunk is None or any(h is None for h in heads):
            return None
        return Preprocess.from_torch(model.preprocessor), trunk, [h for h in heads if h is not None]

    # -- optimizer -------------------------------------------------------------------------

    def flat_adam(self) -> Any:
        """A :class:`~amber.models.flat_adam.FlatAdam` stepping :attr:`optimizer`, kept between updates
        (None when it cannot step it: then use the optimizer itself).

        It is made again whenever it no longer matches the optimizer and the model:
        after a restore loaded new optimizer state, or when parameters were replaced.
        """
        from amber.models.flat_adam import flat_adam

        optimizer = self.optimizer
        flat = self._flat_adam
        if flat is not None and flat.optimizer is optimizer and self._flat_adam_valid(flat):
            return flat
        self._flat_adam = flat = flat_adam(optimizer)
        self._flat_adam_modules = None
        return flat

    def _flat_adam_valid(self, flat: Any) -> bool:
        model = self.model
        modules = (model, *model._modules.values())
        if self._flat_adam_modules != modules:
            if [id(p) for p in model.parameters()] != [id(p) for p in flat.params]:
                return False
            self._flat_adam_modules = modules
        state = flat.optimizer.state
        for p, view in zip(flat.params, flat._slices, strict=True):
            s = state.get(p)
            offset = 4 * view.start
            if (s is None or s.get("step") is not flat.step_tensor
                    or p.data_ptr() != flat.flat_param.data_ptr() + offset
                    or s["exp_avg"].data_ptr() != flat.exp_avg.data_ptr() + offset
                    or s["exp_avg_sq"].data_ptr() != flat.exp_avg_sq.data_ptr() + offset):
                return False
        return True

    # -- target network ----------------------------------------------------------------

    def update_target(self) -> None:
        """Copy the Q network's weights into the target network."""
        wait_for_snapshot()
        with torch.no_grad():
            for target, source in zip(self.target_model.parameters(), self.model.parameters(), strict=True):
                target.copy_(source)

    def get_target_weights(self) -> dict[str, np.ndarray]:
        """The target network's weights as numpy copies, by parameter name."""
        return weights_of(self.target_model)

    def set_target_weights(self, weights: Mapping[str, Any]) -> None:
        """Copy weights into the target network (in place).

        :raises KeyError: weights missing.
        :raises ValueError: a weight's shape differs (nothing is copied then).
        """
        copy_weights(checked_weights(self.target_model, weights, "target weights"))

    # -- export --------------------------------------------------------------------------

    def export_graph(self) -> Any:
        """This policy's Q network as an :class:`amber.export.ModelGraph`.

        One output, ``action_dist_inputs`` (the Q-values; act by argmax). A
        dueling model has two towers, each repeating the trunk's layers: ``v``
        (trunk then value head) and ``a`` (trunk then advantage head),
        combined by the ``"dueling"`` output kind.
        """
        from amber.export import ModelGraph, Output
        from amber.models.torch_mlp import graph_preprocess, sequential_to_dense

        model = self.model
        trunk = sequential_to_dense(model.trunk) if len(model.trunk) else []
        if model.dueling:
            towers = {"v": [*trunk, *sequential_to_dense(model.value)],
                      "a": [*trunk, *sequential_to_dense(model.advantage)]}
            outputs = [Output("action_dist_inputs", "dueling", ("v", "a"))]
        else:
            towers = {"q": [*trunk, *sequential_to_dense(model.q)]}
            outputs = [Output("action_dist_inputs", "identity", ("q",))]
        info = action_info(self.observation_space, self.action_space, q_values=True)
        return ModelGraph(tuple(self.observation_space.shape or ()), graph_preprocess(model.preprocessor),
                          towers, outputs, info)

    # -- state -------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """:meth:`TorchPolicyBase.get_state` plus the target network's weights and the current epsilon."""
        state = super().get_state()
        state["target_weights"] = self.get_target_weights()
        state["cur_epsilon"] = self.cur_epsilon  # informational: global_timestep determines it
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Apply :meth:`get_state`'s output (keys that are absent are left as they are); every weight
        is checked before anything changes."""
        target = (checked_weights(self.target_model, state["target_weights"], "target weights")
                  if "target_weights" in state else [])
        super().set_state(state)
        copy_weights(target)
