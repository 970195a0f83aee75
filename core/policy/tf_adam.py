"""Keras Adam taking torch's Adam step, for the tf2 policies.

Keras's Adam folds the bias corrections into the step size and adds epsilon to
``sqrt(v)``; torch's divides ``sqrt(v)`` by ``sqrt(1 - beta2^t)`` first and adds
epsilon after. Early on, where ``v`` is small, the two steps differ by more than
float32 noise. :func:`torch_adam` makes a Keras Adam whose step is torch's: it
keeps Keras Adam's variables (momentums, velocities, iterations), so its state
and the policies' saved optimizer trees are laid out as before. Importing this
module imports numpy only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["torch_adam"]

_CLASSES: dict[int, type] = {}


def _adam_class(keras: Any) -> type:
    """The Keras Adam subclass with torch's step (made once per keras module)."""
    cls = _CLASSES.get(id(keras))
    if cls is not None:
        return cls
    ops = keras.ops

    class TorchStepAdam(keras.optimizers.Adam):  # type: ignore[misc, name-defined]
        """Keras Adam whose update is ``torch.optim.Adam``'s (no amsgrad, no weight decay)."""

        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            """``var -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, as torch."""
            dtype = variable.dtype
            gradient = ops.cast(gradient, dtype)
            step = ops.cast(self.iterations + 1, dtype)
            bias1 = 1 - ops.power(ops.cast(self.beta_1, dtype), step)
            bias2_sqrt = ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step))
            k = self._get_variable_index(variable)
            m, v = self._momentums[k], self._velocities[k]
            self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
            self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
            denom = ops.add(ops.divide(ops.sqrt(v), bias2_sqrt), self.epsilon)
            step_size = ops.divide(ops.cast(learning_rate, dtype), bias1)
            self.assign_sub(variable, ops.divide(ops.multiply(m, step_size), denom))

    _CLASSES[id(keras)] = TorchStepAdam
    return TorchStepAdam


def torch_adam(keras: Any, learning_rate: float, epsilon: float) -> Any:
    """A Keras Adam (betas 0.9, 0.999) with torch's update step."""
    return _adam_class(keras)(learning_rate=learning_rate, epsilon=epsilon)
