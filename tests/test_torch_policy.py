"""TorchPolicy, its models and distributions, and PPO's learner functions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gym = pytest.importorskip("gymnasium")

import amber  # noqa: E402
from amber.algorithms.ppo.ppo_learner import (  # noqa: E402
    compute_gae,
    discount_cumsum,
    postprocess_fragments,
    ppo_update,
    update_kl_coeff,
)
from amber.models.torch_distributions import TorchCategorical, TorchDiagGaussian  # noqa: E402
from amber.models.torch_mlp import PPOTorchModel, build_mlp, get_activation  # noqa: E402
from amber.names import to_names  # noqa: E402
from amber.policy.policy import Policy  # noqa: E402
from amber.policy.torch_policy import TorchPolicy  # noqa: E402
from amber.state import validate_tree  # noqa: E402

SMALL = {"fcnet_hiddens": [32, 32], "fcnet_activation": "tanh"}
PPO_KW = dict(num_epochs=3, minibatch_size=16, clip_param=0.2, vf_clip_param=10.0, vf_loss_coeff=1.0,
              entropy_coeff=0.01, kl_coeff=0.2, kl_target=0.01, grad_clip=0.5)


def cartpole_policy(seed=0, **config):
    return TorchPolicy(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2),
                       {"model": SMALL, "lr": 1e-3, "seed": seed, "grad_clip": None, **config})


def pendulum_policy(seed=0):
    return TorchPolicy(gym.spaces.Box(-8.0, 8.0, (3,), np.float32), gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
                       {"model": {**SMALL, "fcnet_activation": "relu"}, "lr": 1e-3, "seed": seed, "grad_clip": 1.0})


def obs_for(policy, n, seed=0):
    return np.random.default_rng(seed).normal(size=(n, *policy.observation_space.shape)).astype(np.float32)


def make_batch(policy, n=64, seed=0):
    """A postprocessed-looking batch sampled from ``policy`` itself."""
    rng = np.random.default_rng(seed)
    obs = obs_for(policy, n, seed)
    actions, _, extra = policy.compute_actions(obs)
    return {"obs": obs, "actions": actions, **extra,
            "advantages": rng.normal(size=n).astype(np.float32),
            "value_targets": rng.normal(size=n).astype(np.float32)}


def assert_weights_equal(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k


# -- acting ---------------------------------------------------------------


def test_discrete_compute_actions_shapes_and_dtypes():
    pol = cartpole_policy()
    actions, state_outs, extra = pol.compute_actions(obs_for(pol, 5))
    assert actions.shape == (5,) and actions.dtype == np.int64
    assert set(np.unique(actions)) <= {0, 1}
    assert state_outs == []
    assert extra["action_logp"].shape == (5,) and extra["action_logp"].dtype == np.float32
    assert extra["action_dist_inputs"].shape == (5, 2)
    assert extra["vf_preds"].shape == (5,) and extra["vf_preds"].dtype == np.float32
    assert np.all(extra["action_logp"] <= 0)
    assert pol.global_timestep == 5


def test_box_compute_actions_shapes_dtypes_unclipped():
    pol = pendulum_policy()
    with torch.no_grad():  # push the mean far outside the bounds: actions stay unclipped
        pol.model.pi[-1].bias[0] = 50.0
    actions, _, extra = pol.compute_actions(obs_for(pol, 7))
    assert actions.shape == (7, 1) and actions.dtype == np.float32
    assert extra["action_dist_inputs"].shape == (7, 2)
    assert np.all(actions > 2.0)


def test_observations_of_the_wrong_shape_are_a_clear_value_error():
    """As amber.serve's policies: a ValueError naming the expected shape, not a torch or numpy error
    from inside the network; one observation passed as a batch is told what to do."""
    pol = cartpole_policy()
    with pytest.raises(ValueError, match=r"shape \(4,\) each, not an array of shape \(4,\); .*compute_single_action"):
        pol.compute_actions(np.zeros(4))
    with pytest.raises(ValueError, match=r"shape \(4,\) each, not an array of shape \(2, 5\)$"):
        pol.compute_actions(np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"one observation of shape \(4,\), not one of shape \(3,\)"):
        pol.compute_single_action(np.zeros(3))
    lake = TorchPolicy(gym.spaces.Discrete(16), gym.spaces.Discrete(4), {"model": SMALL, "seed": 0})
    with pytest.raises(ValueError, match=r"one integer each, not an array of shape \(2, 5\)"):
        lake.compute_actions(np.zeros((2, 5), np.int64))
    with pytest.raises(ValueError, match=r"one integer each, not an array of shape \(\); .*batch axis"):
        lake.compute_actions(np.int64(3))
    assert lake.compute_actions(np.array([0, 5, 15]))[0].shape == (3,)
    assert pol.global_timestep == 0


def test_compute_single_action_clips_to_the_bounds_when_asked():
    """RLlib's clip_actions=True: the action an environment runner would send (it was ignored)."""
    pol = pendulum_policy()
    with torch.no_grad():
        pol.model.pi[-1].bias[0] = 50.0
    obs = obs_for(pol, 1)[0]
    assert pol.compute_single_action(obs, explore=False)[0][0] > 2.0  # unclipped by default
    action = pol.compute_single_action(obs, explore=False, clip_actions=True)[0]
    assert action.tolist() == [2.0] and action.dtype == np.float32
    assert cartpole_policy().compute_single_action(obs_for(cartpole_policy(), 1)[0], clip_actions=True)[0] in (0, 1)


def test_explore_false_is_deterministic_and_leaves_the_generator_alone():
    for pol in (cartpole_policy(), pendulum_policy()):
        obs = obs_for(pol, 6)
        before = pol.generator.get_state().clone()
        a1, _, extra = pol.compute_actions(obs, explore=False)
        a2, _, _ = pol.compute_actions(obs, explore=False)
        assert np.array_equal(a1, a2)
        assert torch.equal(before, pol.generator.get_state())
        inputs = extra["action_dist_inputs"]
        if isinstance(pol.action_space, gym.spaces.Discrete):
            assert np.array_equal(a1, inputs.argmax(-1))
        else:
            assert np.array_equal(a1, inputs[:, :1])


def test_explore_default_samples_from_the_policy_generator():
    pol = cartpole_policy()
    obs = obs_for(pol, 200)
    state = pol.generator.get_state().clone()
    torch.manual_seed(123)  # the global RNG plays no part
    a1, _, _ = pol.compute_actions(obs)
    pol.generator.set_state(state)
    torch.manual_seed(456)
    a2, _, _ = pol.compute_actions(obs, explore=True)
    assert np.array_equal(a1, a2)
    assert 0 < a1.sum() < 200  # near-uniform initial policy: both actions occur


def test_compute_single_action_via_base_class():
    pol = cartpole_policy()
    action, state_outs, extra = pol.compute_single_action(np.zeros(4, np.float32), explore=False)
    assert isinstance(action, int) and action in (0, 1)
    assert state_outs == [] and extra["action_dist_inputs"].shape == (2,)
    box = pendulum_policy()
    action, _, extra = box.compute_single_action(np.zeros(3, np.float32))
    assert action.shape == (1,) and extra["vf_preds"].shape == ()


def test_compute_values_matches_vf_preds():
    pol = cartpole_policy()
    obs = obs_for(pol, 9)
    _, _, extra = pol.compute_actions(obs)
    np.testing.assert_allclose(pol.compute_values(obs), extra["vf_preds"], rtol=1e-6, atol=1e-6)


def test_discrete_observations_are_one_hot_encoded():
    pol = TorchPolicy(gym.spaces.Discrete(5), gym.spaces.Discrete(3), {"model": SMALL, "lr": 1e-3, "seed": 1})
    x = pol.model.preprocessor(torch.tensor([0, 3, 4]))
    assert torch.equal(x, torch.eye(5)[[0, 3, 4]])
    actions, _, extra = pol.compute_actions(np.array([0, 3, 4]))
    assert actions.shape == (3,) and extra["vf_preds"].shape == (3,)
    action, _, _ = pol.compute_single_action(2)
    assert action in (0, 1, 2)
    # a Discrete space with a start offset encodes and acts in its own range
    off = TorchPolicy(gym.spaces.Discrete(3, start=10), gym.spaces.Discrete(2, start=-1), {"model": SMALL, "seed": 0})
    assert torch.equal(off.model.preprocessor(torch.tensor([10, 12])), torch.eye(3)[[0, 2]])
    acts, _, _ = off.compute_actions(np.array([10, 11, 12] * 20))
    assert set(np.unique(acts)) <= {-1, 0}


def test_seeded_build_is_reproducible_and_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a, b = cartpole_policy(seed=3), cartpole_policy(seed=3)
    assert torch.equal(torch.rand(3), expected)
    assert_weights_equal(a, b)
    assert not np.array_equal(a.get_weights()["pi.0.weight"], cartpole_policy(seed=4).get_weights()["pi.0.weight"])
    unseeded = [cartpole_policy(seed=None).get_weights()["pi.0.weight"] for _ in range(2)]
    assert not np.array_equal(*unseeded)


def test_model_layout_and_init():
    model = PPOTorchModel(gym.spaces.Box(-1, 1, (2, 3)), gym.spaces.Box(-1, 1, (2,)),
                          {"fcnet_hiddens": [8], "fcnet_activation": "linear"})
    assert [type(m).__name__ for m in model.pi] == ["Linear", "Linear"]
    assert model.pi[0].in_features == 6 and model.pi[-1].out_features == 4 and model.vf[-1].out_features == 1
    assert float(model.pi[-1].weight.detach().abs().max()) < 0.05  # small last policy layer
    inputs, vf = model(torch.zeros(5, 2, 3))
    assert inputs.shape == (5, 4) and vf.shape == (5,)
    assert get_activation("ReLU") is torch.nn.ReLU and get_activation(None) is None
    with pytest.raises(ValueError, match="fcnet_activation"):
        build_mlp(2, [4], "swish", 1)


# -- distributions --------------------------------------------------------


def test_categorical_matches_torch_distributions():
    logits = torch.randn(6, 4)
    ref, ref2 = torch.distributions.Categorical(logits=logits), torch.distributions.Categorical(logits=logits * 2)
    d, d2 = TorchCategorical(logits), TorchCategorical(logits * 2)
    acts = torch.tensor([0, 1, 2, 3, 1, 0])
    torch.testing.assert_close(d.logp(acts), ref.log_prob(acts))
    torch.testing.assert_close(d.entropy(), ref.entropy())
    torch.testing.assert_close(d.kl(d2), torch.distributions.kl_divergence(ref, ref2))
    assert torch.equal(d.deterministic_sample(), logits.argmax(-1))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(d.sample(g1), d.sample(g2))


def test_categorical_samples_follow_the_probabilities():
    probs = torch.tensor([[0.1, 0.6, 0.3], [1.0, 0.0, 0.0]])
    d = TorchCategorical(probs.log().repeat(10000, 1))
    samples = d.sample(torch.Generator().manual_seed(0)).reshape(10000, 2)
    freq = torch.stack([(samples[:, 0] == k).float().mean() for k in range(3)])
    torch.testing.assert_close(freq, probs[0], atol=0.02, rtol=0)
    assert torch.all(samples[:, 1] == 0)


def test_diag_gaussian_matches_torch_distributions():
    inputs, inputs2 = torch.randn(5, 6), torch.randn(5, 6)
    d, d2 = TorchDiagGaussian(inputs), TorchDiagGaussian(inputs2)

    def ref(x):
        return torch.distributions.Independent(torch.distributions.Normal(x[:, :3], x[:, 3:].exp()), 1)

    acts = torch.randn(5, 3)
    torch.testing.assert_close(d.logp(acts), ref(inputs).log_prob(acts))
    torch.testing.assert_close(d.entropy(), ref(inputs).entropy())
    torch.testing.assert_close(d.kl(d2), torch.distributions.kl_divergence(ref(inputs), ref(inputs2)))
    assert torch.equal(d.deterministic_sample(), inputs[:, :3])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(d.sample(g1), d.sample(g2))


# -- state and checkpoints ------------------------------------------------


@pytest.mark.parametrize("make", [cartpole_policy, pendulum_policy])
def test_msgpack_round_trip_is_bit_identical(tmp_path, make):
    pol = make(seed=11)
    ppo_update(pol, make_batch(pol), rng=np.random.default_rng(0), **PPO_KW)  # optimizer has moments
    pol.compute_actions(obs_for(pol, 3))  # generator has moved
    state = pol.get_state()
    validate_tree(to_names(state, portable=True), format="msgpack")  # what the engine hands a format
    assert state["generator"].dtype == np.uint8
    amber.save(state, tmp_path / "ckpt", format="msgpack")
    loaded = amber.load(tmp_path / "ckpt")
    restored = Policy.from_state(loaded)
    assert type(restored) is TorchPolicy
    assert restored.config == pol.config
    assert restored.global_timestep == pol.global_timestep
    assert_weights_equal(pol, restored)
    obs = obs_for(pol, 10, seed=3)
    for _ in range(3):
        a, _, ea = pol.compute_actions(obs, explore=True)
        b, _, eb = restored.compute_actions(obs, explore=True)
        assert np.array_equal(a, b)
        for k in ea:
            assert np.array_equal(ea[k], eb[k]), k
    # the optimizer's moments came back too: one more update stays bit-identical
    batch = make_batch(pol, seed=5)
    sa = ppo_update(pol, batch, rng=np.random.default_rng(9), **PPO_KW)
    sb = ppo_update(restored, batch, rng=np.random.default_rng(9), **PPO_KW)
    assert sa == sb
    assert_weights_equal(pol, restored)
    assert pol.num_grad_updates == restored.num_grad_updates > 0


def test_pickle_round_trip_and_set_state_in_place(tmp_path):
    pol = cartpole_policy(seed=2)
    ppo_update(pol, make_batch(pol), rng=np.random.default_rng(0), **PPO_KW)
    amber.save(pol.get_state(), tmp_path / "p", format="pickle")
    other = cartpole_policy(seed=99)
    other.set_state(amber.load(tmp_path / "p", allow_pickle=True))
    assert_weights_equal(pol, other)
    obs = obs_for(pol, 8)
    assert np.array_equal(pol.compute_actions(obs)[0], other.compute_actions(obs)[0])


def test_get_state_is_a_copy():
    pol = cartpole_policy()
    state = pol.get_state()
    ppo_update(pol, make_batch(pol), rng=np.random.default_rng(0), **PPO_KW)
    fresh = TorchPolicy.build_from_spec(state["policy_spec"])
    fresh.set_state(state)
    assert not np.array_equal(fresh.get_weights()["pi.0.weight"], pol.get_weights()["pi.0.weight"])
    assert fresh.num_params() == pol.num_params() == sum(w.size for w in pol.get_weights().values())


def test_set_weights_round_trip_and_missing_key():
    a, b = cartpole_policy(seed=1), cartpole_policy(seed=2)
    b.set_weights(a.get_weights())
    assert_weights_equal(a, b)
    weights = a.get_weights()
    del weights["vf.0.bias"]
    with pytest.raises(KeyError, match=r"vf\.0\.bias"):
        b.set_weights(weights)


def test_portable_config_drops_what_cannot_be_stored():
    pol = cartpole_policy(env_creator=lambda cfg: None, extra=(1, 2), cls=TorchPolicy)
    config = pol.get_state()["policy_spec"]["config"]
    assert "env_creator" not in config and config["extra"] == [1, 2] and config["cls"] is TorchPolicy


# -- GAE and postprocessing -----------------------------------------------


def test_compute_gae_against_hand_computation():
    gamma, lam = 0.9, 0.8
    rewards, values, last = [1.0, 0.0, 2.0], [0.5, 0.2, -0.1], 0.3
    # deltas: r_t + gamma V_{t+1} - V_t
    d = [1.0 + 0.9 * 0.2 - 0.5, 0.0 + 0.9 * -0.1 - 0.2, 2.0 + 0.9 * 0.3 + 0.1]
    adv2 = d[2]
    adv1 = d[1] + gamma * lam * adv2
    adv0 = d[0] + gamma * lam * adv1
    frag = {"rewards": np.array(rewards, np.float32), "vf_preds": np.array(values, np.float32)}
    adv, targets = compute_gae(frag, last, gamma, lam)
    assert adv.dtype == np.float32 and targets.dtype == np.float32
    np.testing.assert_allclose(adv, [adv0, adv1, adv2], rtol=1e-6)
    np.testing.assert_allclose(targets, np.array([adv0, adv1, adv2]) + values, rtol=1e-6)
    # lambda 1, terminated: value targets are the discounted returns
    _, returns = compute_gae(frag, 0.0, 0.5, 1.0)
    np.testing.assert_allclose(returns, [1.0 + 0.25 * 2.0, 0.5 * 2.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(discount_cumsum(np.ones(3), 0.5), [1.75, 1.5, 1.0])


def test_postprocess_fragments_bootstraps_open_ends_only():
    pol = cartpole_policy()
    rng = np.random.default_rng(0)

    def fragment(n, terminated):
        obs = rng.normal(size=(n, 4)).astype(np.float32)
        return {"obs": obs, "new_obs": obs + 1, "rewards": np.ones(n, np.float32),
                "vf_preds": pol.compute_values(obs), "terminateds": np.eye(n, dtype=bool)[-1] & terminated,
                "truncateds": np.eye(n, dtype=bool)[-1] & (not terminated)}

    frags = [fragment(3, True), fragment(4, False), fragment(2, False)]
    calls = []
    original = pol.compute_values

    def counting(obs):
        calls.append(np.asarray(obs).shape)
        return original(obs)

    pol.compute_values = counting
    batch = postprocess_fragments(pol, frags, 0.99, 0.95)
    assert calls == [(2, 4)]  # one batched call, for the two open fragments
    assert len(batch["obs"]) == 9 and batch["advantages"].shape == (9,) and batch["value_targets"].shape == (9,)
    expected = [compute_gae(frags[0], 0.0, 0.99, 0.95)[0]]
    for f in frags[1:]:
        expected.append(compute_gae(f, float(original(f["new_obs"][-1:])[0]), 0.99, 0.95)[0])
    np.testing.assert_allclose(batch["advantages"], np.concatenate(expected), rtol=1e-6)
    assert postprocess_fragments(pol, [], 0.99, 0.95) == {}


# -- the PPO update -------------------------------------------------------


def test_ppo_update_improves_the_surrogate():
    pol = cartpole_policy()
    batch = make_batch(pol, n=256)
    batch["advantages"] = np.where(batch["actions"] == 1, 1.0, -1.0).astype(np.float32)
    obs_t = torch.from_numpy(batch["obs"])
    acts_t = torch.from_numpy(batch["actions"])

    def mean_logp_of_good():
        with torch.no_grad():
            logp = TorchCategorical(pol.model.action_dist_inputs(obs_t)).logp(acts_t)
        return float(logp[acts_t == 1].mean())

    before = mean_logp_of_good()
    stats = ppo_update(pol, batch, rng=np.random.default_rng(0), **{**PPO_KW, "num_epochs": 4, "minibatch_size": 50})
    assert mean_logp_of_good() > before
    assert stats["num_grad_updates"] == 4 * 6  # ceil(256 / 50) minibatches per epoch
    assert stats["kl"] > 0 and stats["policy_loss"] < 0
    assert set(stats) >= {"total_loss", "policy_loss", "vf_loss", "vf_explained_var", "kl", "entropy",
                          "cur_kl_coeff", "num_grad_updates"}
    assert stats["cur_kl_coeff"] == update_kl_coeff(0.2, stats["kl"], 0.01)


def test_ppo_update_fits_the_value_function_on_box():
    pol = pendulum_policy()
    batch = make_batch(pol, n=128)
    batch["value_targets"] = np.full(128, 3.0, np.float32)
    first = ppo_update(pol, batch, rng=np.random.default_rng(0), **PPO_KW)
    for i in range(5):
        last = ppo_update(pol, batch, rng=np.random.default_rng(i), **PPO_KW)
    assert last["vf_loss"] < first["vf_loss"]
    assert np.all(np.isfinite(list(last.values())))


def test_ppo_update_is_reproducible():
    a, b = cartpole_policy(seed=4), cartpole_policy(seed=4)
    batch = make_batch(a)
    assert ppo_update(a, batch, rng=np.random.default_rng(1), **PPO_KW) == \
        ppo_update(b, batch, rng=np.random.default_rng(1), **PPO_KW)
    assert_weights_equal(a, b)


def test_ppo_update_same_result_single_or_multi_threaded():
    """With torch allowed 2 threads the value net trains on a helper thread: same numbers either way."""
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pol = pendulum_policy(seed=8)
            with torch.no_grad():  # the caller's grad mode does not matter
                stats = ppo_update(pol, make_batch(pol), rng=np.random.default_rng(3), **PPO_KW)
            assert torch.get_num_threads() == threads  # restored
            results.append((stats, pol))
    finally:
        torch.set_num_threads(before)
    assert results[0][0] == results[1][0]
    assert_weights_equal(results[0][1], results[1][1])


def test_ppo_update_reraises_errors_from_the_value_thread():
    before = torch.get_num_threads()
    pol = cartpole_policy()
    batch = make_batch(pol)

    def fail(module, inputs, output):
        raise RuntimeError("value net failed")

    pol.model.vf.register_forward_hook(fail)
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="value net failed"):
            ppo_update(pol, batch, rng=np.random.default_rng(0), **PPO_KW)
        assert torch.get_num_threads() == 2
        assert not any(t.name == "amber-ppo-value" for t in threading.enumerate())
    finally:
        torch.set_num_threads(before)


def test_kl_coeff_adaptation_rule():
    assert update_kl_coeff(0.2, 0.05, 0.01) == pytest.approx(0.3)  # kl > 2 * target
    assert update_kl_coeff(0.2, 0.001, 0.01) == pytest.approx(0.1)  # kl < target / 2
    assert update_kl_coeff(0.2, 0.01, 0.01) == 0.2
    assert update_kl_coeff(0.2, 0.02, 0.01) == 0.2 and update_kl_coeff(0.2, 0.005, 0.01) == 0.2
    # with kl_coeff 0 the KL term is off but still reported
    pol = cartpole_policy()
    stats = ppo_update(pol, make_batch(pol), rng=np.random.default_rng(0), **{**PPO_KW, "kl_coeff": 0.0})
    assert stats["cur_kl_coeff"] == 0.0 and stats["kl"] >= 0.0


# -- the numpy fast path for single observations --------------------------------


def _discrete_obs_policy(seed=0):
    return TorchPolicy(gym.spaces.Discrete(5, start=2), gym.spaces.Discrete(3, start=10),
                       {"model": SMALL, "lr": 1e-3, "seed": seed, "grad_clip": None})


def _fast_and_torch(pol, obs, explore):
    """compute_actions on one observation with and without the fast path, same generator state."""
    state = pol.generator.get_state()
    fast = pol.compute_actions(obs, explore=explore)
    after_fast = pol.generator.get_state()
    pol.generator.set_state(state)
    pol.fast_inference = False
    try:
        slow = pol.compute_actions(obs, explore=explore)
    finally:
        pol.fast_inference = True
    assert torch.equal(after_fast, pol.generator.get_state())  # the same draws from the generator
    return fast, slow


@pytest.mark.parametrize("make", [cartpole_policy, pendulum_policy, _discrete_obs_policy])
@pytest.mark.parametrize("explore", [True, False])
def test_fast_path_matches_the_torch_path(make, explore):
    pol = make()
    obs_space = pol.observation_space
    for i in range(20):
        obs = (np.array([obs_space.start + i % obs_space.n]) if isinstance(obs_space, gym.spaces.Discrete)
               else obs_for(pol, 1, seed=i))
        (fa, _, fe), (sa, _, se) = _fast_and_torch(pol, obs, explore)
        assert fa.dtype == sa.dtype and fa.shape == sa.shape
        np.testing.assert_allclose(fa, sa, rtol=1e-5, atol=1e-5)
        assert fe.keys() == se.keys()
        for k in fe:
            assert fe[k].dtype == se[k].dtype and fe[k].shape == se[k].shape, k
            np.testing.assert_allclose(fe[k], se[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert pol._np_cache is not None  # the fast path did run


def test_fast_path_sees_optimizer_steps_set_weights_and_set_state():
    pol = cartpole_policy()
    obs = obs_for(pol, 1)

    def check():
        (_, _, fe), (_, _, se) = _fast_and_torch(pol, obs, False)
        np.testing.assert_allclose(fe["action_dist_inputs"], se["action_dist_inputs"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fe["vf_preds"], se["vf_preds"], rtol=1e-5, atol=1e-5)
        return fe["vf_preds"].copy()

    v0 = check()
    ppo_update(pol, make_batch(pol), rng=np.random.default_rng(0), **PPO_KW)  # optimizer steps
    v1 = check()
    assert not np.array_equal(v0, v1)
    other = cartpole_policy(seed=5)
    pol.set_weights(other.get_weights())
    v2 = check()
    np.testing.assert_allclose(v2, other.compute_actions(obs, explore=False)[2]["vf_preds"], rtol=1e-6)
    pol.set_state(cartpole_policy(seed=7).get_state())
    check()
    with torch.no_grad():  # storage replaced: the cache must be rebuilt
        for p in pol.model.parameters():
            p.data = p.data * 2.0
    check()
    pol.model.vf = build_mlp(4, [8], "relu", 1)  # module replaced
    check()
    pol.model.pi[0].register_forward_hook(lambda *a: None)  # hooks: fall back to torch
    pol.model.pi = build_mlp(4, [8], "tanh", 2)
    pol.model.pi[0].register_forward_hook(lambda m, i, o: o * 0.0)
    a, _, extra = pol.compute_actions(obs, explore=False)
    assert pol._np_cache is None


def test_fast_path_is_deterministic_and_resumes_bit_exactly():
    a, b = cartpole_policy(seed=3), cartpole_policy(seed=3)
    obs = obs_for(a, 50)
    for i in range(25):
        ra, rb = a.compute_actions(obs[i:i + 1]), b.compute_actions(obs[i:i + 1])
        assert np.array_equal(ra[0], rb[0]) and np.array_equal(ra[2]["action_logp"], rb[2]["action_logp"])
    restored = TorchPolicy.from_state(a.get_state())
    for i in range(25, 50):
        ra, rr = a.compute_actions(obs[i:i + 1]), restored.compute_actions(obs[i:i + 1])
        assert np.array_equal(ra[0], rr[0])
        for k in ra[2]:
            assert np.array_equal(ra[2][k], rr[2][k]), k


@pytest.mark.parametrize("activation", ["tanh", "relu", None])
def test_train_forward_matches_the_module_and_its_gradients(activation):
    from amber.models.torch_mlp import train_forward

    net = build_mlp(4, [64, 32], activation, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    g = torch.randn(50, 3, generator=torch.Generator().manual_seed(2))
    out = net(x)
    (out * g).sum().backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    fast = train_forward(net, x)
    (fast * g).sum().backward()
    torch.testing.assert_close(fast, out, rtol=1e-5, atol=1e-5)
    for a, b in zip(expected, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    xd = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: train_forward(net.double(), z), (xd,))


# -- the shared base class and the numpy MLP ---------------------------------------------


def test_numpy_mlp_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, amber.models.numpy_mlp; "
            "assert not {'torch', 'gymnasium'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear", None])
def test_numpy_mlp_matches_torch_from_modules_arrays_and_state_dicts(activation):
    from amber.models.numpy_mlp import NumpyMLP

    net = build_mlp(5, [16, 8], activation, 3, generator=torch.Generator().manual_seed(0))
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    arrays = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears]
    state = {f"pi.{k}": v.numpy() for k, v in net.state_dict().items()}
    for mlp in (NumpyMLP.from_torch(net), NumpyMLP.from_arrays(arrays, activation),
                NumpyMLP.from_state_dict(state, "pi", activation)):
        np.testing.assert_allclose(mlp(x), want, rtol=1e-5, atol=1e-6)
    live = NumpyMLP.from_torch(net)
    with torch.no_grad():
        linears[-1].bias.add_(1.0)  # in place: the views see it
    np.testing.assert_allclose(live(x), want + 1.0, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown activation"):
        NumpyMLP.from_arrays(arrays, "gelu")
    with pytest.raises(KeyError):
        NumpyMLP.from_state_dict(state, "vf", activation)
    hooked = build_mlp(5, [4], "tanh", 2)
    hooked[0].register_forward_hook(lambda *a: None)
    assert NumpyMLP.from_torch(hooked) is None and NumpyMLP.from_torch(hooked.double()) is None


def test_numpy_preprocess_matches_the_torch_preprocessor():
    from amber.models.numpy_mlp import Preprocess
    from amber.models.torch_mlp import ObsPreprocessor
    from amber.policy.spaces import space_to_state

    discrete, box = gym.spaces.Discrete(4, start=3), gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32)
    for space, obs in [(discrete, np.array([3, 6, 5], dtype=np.int64)),
                       (box, np.random.default_rng(0).normal(size=(3, 2, 3)).astype(np.float32))]:
        want = ObsPreprocessor(space)(torch.from_numpy(obs)).numpy()
        for pre in (Preprocess.from_torch(ObsPreprocessor(space)), Preprocess.for_space(space),
                    Preprocess.for_space(space_to_state(space))):
            got = pre(obs)
            assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(Preprocess.one_hot(4, 3)(np.array([4])), [[0.0, 1.0, 0.0, 0.0]])


def _dqn_and_sac():
    from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy
    from amber.algorithms.sac.sac_torch_policy import SACTorchPolicy

    dqn = DQNTorchPolicy(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2),
                         {"model": SMALL, "seed": 0})
    sac = SACTorchPolicy(gym.spaces.Box(-1.0, 1.0, (3,), np.float32), gym.spaces.Box(-2.0, 2.0, (1,), np.float32),
                         {"model": SMALL, "seed": 0})
    return dqn, sac


def test_every_torch_policy_is_a_torch_policy_base_and_keeps_its_registered_name():
    from amber.names import BUILTIN, resolve
    from amber.policy.torch_policy_base import TorchPolicyBase

    for pol in (cartpole_policy(), *_dqn_and_sac()):
        assert isinstance(pol, TorchPolicyBase)
        name = f"amber.{type(pol).__name__}"
        assert resolve(name) is type(pol)
        module, _, qualname = BUILTIN[name].partition(":")
        assert (type(pol).__module__, type(pol).__qualname__) == (module, qualname)


@pytest.mark.parametrize("which", ["ppo", "dqn", "sac"])
def test_a_wrong_weight_shape_is_an_error_and_changes_nothing(which):
    pol = {"ppo": cartpole_policy, "dqn": lambda: _dqn_and_sac()[0], "sac": lambda: _dqn_and_sac()[1]}[which]()
    state = pol.get_state()
    weights = dict(state["weights"])
    name = sorted(weights)[-1]
    weights[name] = np.zeros((1, *weights[name].shape), np.float32)  # would broadcast
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        pol.set_weights(weights)
    bad = {**state, "weights": weights, "global_timestep": 99}
    if which == "dqn":  # the target network's weights are checked before anything changes, too
        bad = {**state, "target_weights": weights, "global_timestep": 99}
    with pytest.raises(ValueError):
        pol.set_state(bad)
    after = pol.get_state()
    assert after["global_timestep"] == state["global_timestep"]
    for key in ("weights", "target_weights"):
        for k, v in state.get(key, {}).items():
            assert np.array_equal(after[key][k], v), (key, k)


def test_optimizers_by_name():
    ppo, (dqn, sac) = cartpole_policy(), _dqn_and_sac()
    assert ppo.optimizer is ppo.get_optimizer("default") and dqn.optimizer is dqn.get_optimizer("default")
    assert set(sac.optimizers) == {"actor", "critic", "alpha"}
    assert sac.get_optimizer("alpha").param_groups[0]["params"] == [sac.model.log_alpha]
    with pytest.raises(AttributeError, match="several optimizers"):
        sac.optimizer  # noqa: B018
    with pytest.raises(KeyError, match="unknown optimizer 'actor'"):
        ppo.get_optimizer("actor")


def test_a_decoded_space_is_a_new_equal_space_every_time():
    from amber.policy import spaces as sp

    cases = [gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Box(0, 255, (2, 3), np.uint8),
             gym.spaces.Box(-1.0, 1.0, (2,), np.float64), gym.spaces.Discrete(5, start=-2)]
    for space in cases:
        desc = sp.space_to_state(space)
        a, b = sp.space_from_state(desc), sp.space_from_state(desc)
        assert a == space and b == space and a is not b and type(a) is type(space)
        a.seed(7)
        first = a.sample()
        b.seed(7)
        a.sample()  # drawing from one leaves the other's generator alone
        assert np.array_equal(b.sample(), first)
    # descriptions that differ only in dtype give different spaces, also once many were decoded
    for i in range(sp.MAX_DECODED + 3):
        sp.space_from_state({"type": "Discrete", "n": i + 1, "start": 0})
    f32 = {"type": "Box", "low": np.zeros(2, np.float32), "high": np.ones(2, np.float32), "dtype": "<f4"}
    assert sp.space_from_state(f32).dtype == np.float32
    assert sp.space_from_state({**f32, "dtype": "<f8"}).dtype == np.float64
    assert len(sp._DECODED) <= sp.MAX_DECODED


@pytest.mark.parametrize(("algo", "env"), [("PPO", "Pendulum-v1"), ("PPO", "CartPole-v1"),
                                           ("SAC", "Pendulum-v1"), ("DQN", "CartPole-v1")])
def test_an_empty_batch_gives_empty_actions_and_info(algo, env):
    """A server batching requests may find none: actions [0, *shape] and every info column with
    no rows, as for a batch of one (the Box observation's flattening failed on zero rows)."""
    import importlib

    module = importlib.import_module(f"amber.algorithms.{algo.lower()}")
    built = getattr(module, f"{algo}Config")().environment(env).build()
    try:
        policy = built.get_policy()
        obs = policy.observation_space.sample()[None]
        one, _, one_info = policy.compute_actions(obs, explore=False)
        for explore in (False, True):
            actions, _, info = policy.compute_actions(obs[:0], explore=explore)
            assert actions.shape == (0, *one.shape[1:]) and actions.dtype == one.dtype
            assert {k: (v.shape[1:], v.dtype) for k, v in info.items()} == {
                k: (v.shape[1:], v.dtype) for k, v in one_info.items()}
            assert all(len(v) == 0 for v in info.values())
    finally:
        built.stop()
