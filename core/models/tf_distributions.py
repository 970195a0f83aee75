"""Action distributions over ``action_dist_inputs`` in TensorFlow, for the tf2 losses.

The maths of :mod:`amber.models.torch_distributions` (log-likelihood,
entropy, KL). Sampling is not here: a tf2 policy samples in numpy
(:mod:`amber.models.numpy_distributions`) with a generator whose state is in
its checkpoint. Importing this module imports tensorflow.
"""

from __future__ import annotations

import math
from typing import Any

from amber.models.keras_mlp import tf_runtime

tf, _ = tf_runtime()

__all__ = ["TFCategorical", "TFDiagGaussian", "TFDistribution", "tf_dist_class_for"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class TFDistribution:
    """A batch of action distributions built from ``action_dist_inputs`` (a float32 tensor)."""

    def __init__(self, inputs: Any) -> None:
        self.inputs = inputs

    def logp(self, actions: Any) -> Any:
        """Log-likelihood of ``actions``, ``[batch]``."""
        raise NotImplementedError

    def entropy(self) -> Any:
        """Entropy, ``[batch]``."""
        raise NotImplementedError

    def kl(self, other: TFDistribution) -> Any:
        """``KL(self || other)``, ``[batch]``."""
        raise NotImplementedError


class TFCategorical(TFDistribution):
    """Categorical over logits ``[batch, n]``; actions are indices ``[batch]``."""

    def __init__(self, inputs: Any) -> None:
        super().__init__(inputs)
        self.log_probs = tf.nn.log_softmax(inputs, axis=-1)

    def logp(self, actions: Any) -> Any:
        """Log-probability of integer ``actions``."""
        idx = tf.cast(actions, tf.int32)[:, None]
        return tf.gather(self.log_probs, idx, batch_dims=1)[:, 0]

    def entropy(self) -> Any:
        """``-sum p log p``."""
        return -tf.reduce_sum(tf.exp(self.log_probs) * self.log_probs, axis=-1)

    def kl(self, other: TFDistribution) -> Any:
        """``sum p (log p - log q)``."""
        if not isinstance(other, TFCategorical):
            raise TypeError("KL of a categorical needs another categorical")
        return tf.reduce_sum(tf.exp(self.log_probs) * (self.log_probs - other.log_probs), axis=-1)


class TFDiagGaussian(TFDistribution):
    """Diagonal Gaussian over ``[batch, 2 * d]`` = mean and log_std; actions are ``[batch, d]``."""

    def __init__(self, inputs: Any) -> None:
        super().__init__(inputs)
        self.mean, self.log_std = tf.split(inputs, 2, axis=-1)
        self.std = tf.exp(self.log_std)

    def logp(self, actions: Any) -> Any:
        """Sum over action dimensions of the Gaussian log-density."""
        z = (tf.reshape(actions, tf.shape(self.mean)) - self.mean) / self.std
        return tf.reduce_sum(-0.5 * tf.square(z) - self.log_std - _HALF_LOG_2PI, axis=-1)

    def entropy(self) -> Any:
        """``sum (log_std + 0.5 log(2 pi e))``."""
        return tf.reduce_sum(self.log_std + (_HALF_LOG_2PI + 0.5), axis=-1)

    def kl(self, other: TFDistribution) -> Any:
        """Closed-form KL between diagonal Gaussians."""
        if not isinstance(other, TFDiagGaussian):
            raise TypeError("KL of a Gaussian needs another Gaussian")
        num = tf.square(self.std) + tf.square(self.mean - other.mean)
        return tf.reduce_sum(other.log_std - self.log_std + num / (2.0 * tf.square(other.std)) - 0.5, axis=-1)


def tf_dist_class_for(action_space: Any) -> type[TFDistribution]:
    """The distribution class for a Discrete or Box action space.

    :raises ValueError: other spaces.
    """
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return TFCategorical
    if isinstance(action_space, gym.spaces.Box):
        return TFDiagGaussian
    raise ValueError(f"action spaces of type {type(action_space).__name__} are not supported")
