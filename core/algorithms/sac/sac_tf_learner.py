"""SAC's update for tf2 policies: the losses of :mod:`amber.algorithms.sac.sac_learner` in TensorFlow,
one compiled ``tf.function``; the learner's noise is drawn in numpy from the policy's
``learner_generator`` (the next actions' first, then the new actions', as the torch update)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.algorithms.sac.sac_common import LOG_STD_MAX, LOG_STD_MIN, STAT_NAMES
from amber.policy import sample_batch as sb

if TYPE_CHECKING:
    from amber.algorithms.sac.sac_tf_policy import SACTFPolicy

__all__ = ["sac_tf_update"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def _step_function(policy: SACTFPolicy, gamma: float, tau: float, grad_clip: float | None) -> Any:
    """``fn(obs, actions, rewards, new_obs, alive, noise_next, noise_new) -> stats``."""
    tf = policy.tf
    m = policy.model
    actor_vars, critic_vars = policy.optimizer_variables("actor"), policy.optimizer_variables("critic")
    target_vars = [v for t in m.targets for _, v in t.variables()]
    opts = {n: policy.get_optimizer(n) for n in ("actor", "critic", "alpha")}
    target_entropy = float(policy.target_entropy)

    def sample(x: Any, noise: Any) -> tuple[Any, Any]:
        mean, log_std = tf.split(m.pi(x), 2, axis=-1)
        log_std = tf.clip_by_value(log_std, LOG_STD_MIN, LOG_STD_MAX)
        u = mean + tf.exp(log_std) * noise
        gauss = -0.5 * tf.square(noise) - log_std - _HALF_LOG_2PI
        log_det = 2.0 * (_LOG_2 - u - tf.nn.softplus(-2.0 * u))
        return tf.tanh(u), tf.reduce_sum(gauss - log_det, axis=-1)

    def min_q(nets: list[Any], xa: Any) -> Any:
        q = nets[0](xa)
        for net in nets[1:]:
            q = tf.minimum(q, net(xa))
        return q[:, 0]

    def step(obs: Any, actions: Any, rewards: Any, new_obs: Any, alive: Any, noise_next: Any,
             noise_new: Any) -> Any:
        log_alpha = tf.convert_to_tensor(m.log_alpha)
        alpha = tf.exp(log_alpha)
        x, x_next = m.features(obs), m.features(new_obs)
        next_actions, next_logp = sample(x_next, noise_next)
        q_next = min_q(m.targets, tf.concat([x_next, next_actions], axis=-1))
        y = tf.stop_gradient(rewards + gamma * alive * (q_next - alpha * next_logp))
        with tf.GradientTape(persistent=True) as tape:
            xa = tf.concat([x, actions], axis=-1)
            qs = [c(xa)[:, 0] for c in m.critics]
            critic_loss = tf.add_n([0.5 * tf.reduce_mean(tf.square(q - y)) for q in qs])
            new_actions, logp = sample(x, noise_new)
            actor_loss = tf.reduce_mean(alpha * logp - min_q(m.critics, tf.concat([x, new_actions], axis=-1)))
            alpha_loss = -tf.reduce_mean(m.log_alpha * (tf.stop_gradient(logp) + target_entropy))
        critic_grads = tape.gradient(critic_loss, critic_vars)
        actor_grads = tape.gradient(actor_loss, actor_vars)  # the critics' weights: not updated by it
        alpha_grads = tape.gradient(alpha_loss, [m.log_alpha])
        del tape
        if grad_clip is not None:
            critic_grads, _ = tf.clip_by_global_norm(critic_grads, grad_clip)
            actor_grads, _ = tf.clip_by_global_norm(actor_grads, grad_clip)
        opts["critic"].apply_gradients(list(zip(critic_grads, critic_vars, strict=True)))
        opts["actor"].apply_gradients(list(zip(actor_grads, actor_vars, strict=True)))
        opts["alpha"].apply_gradients(list(zip(alpha_grads, [m.log_alpha], strict=True)))
        for t, c in zip(target_vars, critic_vars, strict=True):
            t.assign(t + tau * (c - t))
        q1 = qs[0]
        return tf.stack([critic_loss, actor_loss, alpha_loss, alpha, log_alpha, tf.reduce_mean(q1),
                         tf.reduce_max(q1), tf.reduce_min(q1), -tf.reduce_mean(logp)])

    return tf.function(step, reduce_retracing=True, autograph=False)


def sac_tf_update(policy: SACTFPolicy, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """:func:`amber.algorithms.sac.sac_learner.sac_update` for a tf2 policy: one SAC update (critics,
    actor, temperature, Polyak targets) from a replayed batch; the same stats."""
    tf = policy.tf
    cfg = policy.config
    clip = cfg.get("grad_clip")
    key = (float(cfg.get("gamma", 0.99)), float(cfg.get("tau", 5e-3)), None if clip is None else float(clip))
    fn = policy.train_functions.get(key)
    if fn is None:
        fn = policy.train_functions[key] = _step_function(policy, *key)
    n = len(batch[sb.REWARDS])
    noise_next = policy.learner_generator.standard_normal((n, policy.action_dim), dtype=np.float32)
    noise_new = policy.learner_generator.standard_normal((n, policy.action_dim), dtype=np.float32)
    alive = 1.0 - np.asarray(batch[sb.TERMINATEDS], dtype=np.float32)
    stats = fn(tf.constant(policy.obs_array(batch[sb.OBS])),
               tf.constant(policy.normalized_actions(batch[sb.ACTIONS])),
               tf.constant(np.asarray(batch[sb.REWARDS], np.float32)),
               tf.constant(policy.obs_array(batch[sb.NEW_OBS])), tf.constant(alive),
               tf.constant(noise_next), tf.constant(noise_new)).numpy()
    policy.num_grad_updates += 1
    policy.weights_changed()
    result: dict[str, Any] = dict(zip(STAT_NAMES, (float(v) for v in stats), strict=True))
    result["target_entropy"] = policy.target_entropy
    result["num_grad_updates"] = policy.num_grad_updates
    return result
