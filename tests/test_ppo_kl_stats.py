"""PPO's reported ``cur_kl_coeff`` is, as in RLlib 2.10 (old API stack: the policy's stats are taken
in the update, ``update_kl`` runs after it), the KL coefficient that iteration's loss used; the
adapted one is kept for the next iteration (and the checkpoint)."""

from __future__ import annotations

import pytest

import amber.algorithms.ppo.ppo_learner as learner
from amber.algorithms.ppo import PPOConfig


def _stats(result, pid="default_policy"):
    return result["info"]["learner"][pid]["learner_stats"]


@pytest.fixture
def used_coefficients(monkeypatch):
    """The ``kl_coeff`` each PPO update's loss was given, in call order."""
    used, update = [], learner.ppo_update

    def recording(*args, **kwargs):
        used.append(kwargs["kl_coeff"])
        return update(*args, **kwargs)

    monkeypatch.setattr(learner, "ppo_update", recording)
    return used


def test_the_reported_kl_coeff_is_the_one_the_iterations_loss_used(used_coefficients):
    # kl_target so small that every iteration's KL exceeds twice it: the coefficient grows by 1.5 each time
    algo = (PPOConfig().environment("CartPole-v1").debugging(seed=0).reporting(log_results=False)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=2, kl_coeff=0.2, kl_target=1e-12,
                      model={"fcnet_hiddens": [8]})).build()
    try:
        reported = [_stats(algo.train())["cur_kl_coeff"] for _ in range(3)]
        assert reported[0] == 0.2  # the initial kl_coeff, for iteration 1
        assert reported == used_coefficients
        assert reported == pytest.approx([0.2, 0.3, 0.45])
        assert algo.kl_coeffs["default_policy"] == pytest.approx(0.675)  # adapted after iteration 3
    finally:
        algo.stop()
