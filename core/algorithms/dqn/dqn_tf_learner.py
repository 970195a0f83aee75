"""DQN's TD update for tf2 policies: the loss of :func:`amber.algorithms.dqn.dqn_learner.dqn_update`
(the Huber loss, delta 1, of the n-step TD error; double Q or not) as one compiled ``tf.function``
per setting, stepping the policy's Keras Adam. n-step transitions and replay are shared with torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.policy import sample_batch as sb

if TYPE_CHECKING:
    from amber.algorithms.dqn.dqn_tf_policy import DQNTFPolicy

__all__ = ["dqn_tf_update"]


def _step_function(policy: DQNTFPolicy, double_q: bool, grad_clip: float | None) -> Any:
    """``fn(obs, new_obs, actions, rewards, discounts, not_done) -> stats [6]`` (the last: grad norm)."""
    tf = policy.tf
    model, target = policy.model, policy.target_model
    variables = policy.optimizer_variables("default")
    opt = policy.optimizer

    def step(obs: Any, new_obs: Any, actions: Any, rewards: Any, discounts: Any, not_done: Any) -> Any:
        q_next_target = tf.stop_gradient(target(new_obs))
        with tf.GradientTape() as tape:
            q = model(obs)
            if double_q:
                best = tf.argmax(tf.stop_gradient(model(new_obs)), axis=1)
            else:
                best = tf.argmax(q_next_target, axis=1)
            q_next = tf.gather(q_next_target, best[:, None], batch_dims=1)[:, 0]
            targets = tf.stop_gradient(rewards + discounts * not_done * q_next)
            q_taken = tf.gather(q, actions[:, None], batch_dims=1)[:, 0]
            td = q_taken - targets
            err = tf.abs(td)
            loss = tf.reduce_mean(tf.where(err < 1.0, 0.5 * tf.square(td), err - 0.5))
        grads = tape.gradient(loss, variables)
        gnorm = tf.constant(0.0)
        if grad_clip is not None:
            grads, gnorm = tf.clip_by_global_norm(grads, float(grad_clip))
        opt.apply_gradients(list(zip(grads, variables, strict=True)))
        return tf.stack([loss, tf.reduce_mean(q_taken), tf.reduce_mean(td), tf.reduce_max(err), gnorm])

    return tf.function(step, reduce_retracing=True, autograph=False)


def dqn_tf_update(policy: DQNTFPolicy, batch: Mapping[str, np.ndarray], *, double_q: bool,
                  grad_clip: float | None) -> dict[str, Any]:
    """:func:`amber.algorithms.dqn.dqn_learner.dqn_update` for a tf2 policy: one gradient step on a
    replayed batch; the same stats (``loss``, ``mean_q``, ``mean_td_error``, ``max_abs_td_error``,
    ``grad_gnorm``, ``cur_epsilon``)."""
    tf = policy.tf
    key = (bool(double_q), None if grad_clip is None else float(grad_clip))
    fn = policy.train_functions.get(key)
    if fn is None:
        fn = policy.train_functions[key] = _step_function(policy, *key)
    not_done = (~np.asarray(batch[sb.TERMINATEDS], dtype=bool)).astype(np.float32)
    stats = fn(tf.constant(policy.obs_array(batch[sb.OBS])), tf.constant(policy.obs_array(batch[sb.NEW_OBS])),
               tf.constant(policy.actions_array(batch[sb.ACTIONS])),
               tf.constant(np.asarray(batch[sb.REWARDS], np.float32)),
               tf.constant(np.asarray(batch[sb.DISCOUNTS], np.float32)), tf.constant(not_done)).numpy()
    policy.num_grad_updates += 1
    policy.weights_changed()
    return {"loss": float(stats[0]), "mean_q": float(stats[1]), "mean_td_error": float(stats[2]),
            "max_abs_td_error": float(stats[3]),
            "grad_gnorm": float(stats[4]) if grad_clip is not None else 0.0,
            "cur_epsilon": policy.cur_epsilon}
