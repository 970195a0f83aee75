"""PPO's update for tf2 policies: the loss of :mod:`amber.algorithms.ppo.ppo_loss` in TensorFlow,
one compiled ``tf.function`` per epoch.

What stays framework-free is shared with torch: GAE postprocessing
(:func:`~amber.algorithms.ppo.ppo_learner.postprocess_fragments`), advantage
standardisation, the minibatch shuffles (one ``rng.permutation`` per epoch,
the same draws as the torch update), the adaptive KL rule and the stats.
Each epoch runs its minibatches in a ``tf.while_loop`` inside one
``tf.function``: forward both towers, the PPO loss, gradients (clipped by
global norm with ``grad_clip``), one Keras Adam step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from amber.algorithms.ppo.ppo_common import explained_variance, update_kl_coeff
from amber.policy import sample_batch as sb

if TYPE_CHECKING:
    from amber.policy.tf_policy import PPOTFPolicy

__all__ = ["ppo_tf_update"]

_STAT_NAMES = ("total_loss", "policy_loss", "vf_loss", "kl", "entropy")


def _epoch_function(policy: PPOTFPolicy, clip_param: float, vf_clip_param: float, vf_loss_coeff: float,
                    entropy_coeff: float, grad_clip: float | None) -> Any:
    """The compiled epoch: ``fn(columns, perm, minibatch_size, kl_coeff) -> (stats [k, 5], vf [n])``."""
    from amber.models.tf_distributions import tf_dist_class_for

    tf = policy.tf
    model, dist_class = policy.model, tf_dist_class_for(policy.action_space)
    variables = policy.optimizer_variables("default")
    opt = policy.optimizer

    def loss_fn(obs: Any, act: Any, old_logp: Any, old_inputs: Any, adv: Any, targets: Any,
                kl_coeff: Any) -> tuple[Any, Any]:
        dist_inputs, vf = model(obs)
        dist = dist_class(dist_inputs)
        ratio = tf.exp(dist.logp(act) - old_logp)
        clipped = tf.clip_by_value(ratio, 1.0 - clip_param, 1.0 + clip_param)
        policy_loss = -tf.reduce_mean(tf.minimum(adv * ratio, adv * clipped))
        entropy = tf.reduce_mean(dist.entropy())
        kl = tf.reduce_mean(dist_class(old_inputs).kl(dist))
        vf_loss = tf.reduce_mean(tf.clip_by_value(tf.square(vf - targets), 0.0, vf_clip_param))
        total = policy_loss + kl_coeff * kl + vf_loss_coeff * vf_loss
        if entropy_coeff != 0.0:
            total = total - entropy_coeff * entropy
        else:
            entropy = tf.stop_gradient(entropy)
        return tf.stack([total, policy_loss, vf_loss, tf.stop_gradient(kl), entropy]), vf

    def epoch(cols: tuple[Any, ...], perm: Any, mb: Any, kl_coeff: Any) -> tuple[Any, Any]:
        shuffled = [tf.gather(c, perm) for c in cols]
        n = tf.shape(perm)[0]
        count = (n + mb - 1) // mb
        stats = tf.TensorArray(tf.float32, size=count)
        preds = tf.TensorArray(tf.float32, size=count, infer_shape=False)
        for i in tf.range(count):
            start = i * mb
            part = [c[start:start + mb] for c in shuffled]
            with tf.GradientTape() as tape:
                losses, vf = loss_fn(*part, kl_coeff)
                total = losses[0]
            grads = tape.gradient(total, variables)
            if grad_clip is not None:
                grads, _ = tf.clip_by_global_norm(grads, float(grad_clip))
            opt.apply_gradients(list(zip(grads, variables, strict=True)))
            stats = stats.write(i, losses)
            preds = preds.write(i, vf)
        return stats.stack(), preds.concat()

    return tf.function(epoch, reduce_retracing=True)


def _columns(policy: PPOTFPolicy, batch: dict[str, np.ndarray]) -> tuple[Any, ...]:
    """The batch's columns as tensors, advantages standardized over the whole batch (as torch's)."""
    tf = policy.tf
    adv = np.asarray(batch[sb.ADVANTAGES], dtype=np.float64)
    adv = ((adv - adv.mean()) / max(1e-4, float(adv.std()))).astype(np.float32)

    def f32(key: str) -> Any:
        return tf.constant(np.asarray(batch[key], dtype=np.float32))

    return (tf.constant(policy.obs_array(batch[sb.OBS])),
            tf.constant(policy.actions_array(batch[sb.ACTIONS])),
            f32(sb.ACTION_LOGP), f32(sb.ACTION_DIST_INPUTS), tf.constant(adv), f32(sb.VALUE_TARGETS))


def ppo_tf_update(
    policy: PPOTFPolicy,
    batch: dict[str, np.ndarray],
    *,
    num_epochs: int,
    minibatch_size: int,
    clip_param: float,
    vf_clip_param: float,
    vf_loss_coeff: float,
    entropy_coeff: float,
    kl_coeff: float,
    kl_target: float,
    grad_clip: float | None,
    rng: np.random.Generator,
    overlap: bool = True,
) -> dict[str, Any]:
    """:func:`amber.algorithms.ppo.ppo_learner.ppo_update` for a tf2 policy: the same arguments,
    the same shuffles and the same stats (``overlap`` is accepted and ignored)."""
    n = len(batch[sb.ADVANTAGES])
    if n == 0:
        return {"cur_kl_coeff": float(kl_coeff), "num_grad_updates": 0}
    tf = policy.tf
    key = (float(clip_param), float(vf_clip_param), float(vf_loss_coeff), float(entropy_coeff),
           None if grad_clip is None else float(grad_clip))
    fn = policy.train_functions.get(key)
    if fn is None:
        fn = policy.train_functions[key] = _epoch_function(policy, *key)
    cols = _columns(policy, batch)
    mb = tf.constant(max(1, min(int(minibatch_size), n)), tf.int32)
    klc = tf.constant(float(kl_coeff), tf.float32)
    stats, vf, targets = [], np.zeros(0, np.float32), np.zeros(0, np.float32)
    for _ in range(int(num_epochs)):
        perm = rng.permutation(n)
        epoch_stats, vf_t = fn(cols, tf.constant(perm), mb, klc)
        stats.append(epoch_stats.numpy())
        vf, targets = vf_t.numpy(), np.asarray(batch[sb.VALUE_TARGETS], np.float32)[perm]
    policy.weights_changed()
    all_stats = np.concatenate(stats) if stats else np.zeros((0, 5), np.float32)
    means = all_stats.astype(np.float64).mean(0) if len(all_stats) else np.zeros(5)
    result: dict[str, Any] = dict(zip(_STAT_NAMES, (float(v) for v in means), strict=True))
    result["vf_explained_var"] = explained_variance(targets, vf) if len(vf) else -1.0
    result["cur_kl_coeff"] = float(update_kl_coeff(float(kl_coeff), result["kl"], kl_target))
    result["num_grad_updates"] = len(all_stats)
    policy.num_grad_updates += len(all_stats)
    return result
