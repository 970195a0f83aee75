"""Algorithms through the checkpoint engine: round trips, subsets, failed restores, exact resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm, AlgorithmStoppedError
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPO, PPOConfig
from amber.errors import CheckpointError, CorruptCheckpointError
from amber.examples.envs.classes.multi_agent import MultiAgentCartPole
from amber.policy.policy import Policy, PolicySpec
from tests.treeutil import assert_same_weights

FORMATS = ["pickle", "msgpack"]
SMALL = {"train_batch_size": 256, "minibatch_size": 64, "num_epochs": 2,
         "model": {"fcnet_hiddens": [32, 32]}}


def pol_a_b(agent_id, episode, worker, **kw):
    """A registered mapping: agent 0 → pol_a, the others → pol_b."""
    return "pol_a" if agent_id == 0 else "pol_b"


amber.register_class(pol_a_b, name="tests.ppo.pol_a_b")


def single(seed=0):
    return PPOConfig().environment("CartPole-v1").training(**SMALL).debugging(seed=seed)


def multi(seed=0, **kw):
    return (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .training(**SMALL).debugging(seed=seed)
            .multi_agent(policies={"pol_a", "pol_b"}, policy_mapping_fn=pol_a_b, **kw))


def weights(algo):
    return {pid: p.get_weights() for pid, p in algo.policies.items()}


@pytest.fixture(autouse=True)
def _results_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path / "results"))


# -- config -------------------------------------------------------------------------------


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="'clip_parm'.*clip_param"):
        PPOConfig().training(clip_parm=0.1)


def test_aliases_and_dict_round_trip():
    cfg = PPOConfig().training(sgd_minibatch_size=32, num_sgd_iter=3, lr=1e-3)
    assert (cfg.minibatch_size, cfg.num_epochs, cfg.lr) == (32, 3, 1e-3)
    back = PPOConfig.from_dict(cfg.to_dict())
    assert type(back) is PPOConfig and back.to_dict() == cfg.to_dict()


def test_bad_framework_names_the_choices():
    with pytest.raises(ValueError, match="choices: torch"):
        PPOConfig().framework("jax")


def test_stop_then_train_is_a_clear_error():
    algo = single().build()
    algo.stop()
    with pytest.raises(AlgorithmStoppedError, match="stopped"):
        algo.train()


def test_train_result_has_the_contract_keys():
    algo = single().build()
    result = algo.train()
    for key in ("training_iteration", "num_env_steps_sampled_lifetime", "episode_return_mean"):
        assert key in result
    stats = result["info"]["learner"]["default_policy"]["learner_stats"]
    assert {"policy_loss", "vf_loss", "kl", "entropy"} <= set(stats)
    assert result["num_env_steps_sampled_lifetime"] >= 256


def test_seeded_runs_are_identical():
    a, b = single(seed=3).build(), single(seed=3).build()
    for _ in range(2):
        a.train()
        b.train()
    assert_same_weights(weights(a), weights(b))


@pytest.mark.parametrize(("kind", "num_envs", "batch"), [
    ("single", 3, 1000), ("single", 4, 1001), ("single", 4, 2), ("multi", 3, 1000),
])
def test_one_train_samples_exactly_train_batch_size(kind, num_envs, batch):
    """api.md: one PPO train() samples train_batch_size env steps, with any number of env copies
    (env steps, not agent steps, in multi-agent); the rows learned from are the agent steps."""
    config = (single(seed=1) if kind == "single" else multi(seed=1)).training(train_batch_size=batch)
    algo = config.env_runners(num_envs_per_env_runner=num_envs).build()
    try:
        for i in (1, 2):
            result = algo.train()
            assert result["num_env_steps_sampled_lifetime"] == i * batch
            assert algo.counters["num_agent_steps_trained_lifetime"] == result["num_agent_steps_sampled_lifetime"]
        if kind == "multi":
            assert result["num_agent_steps_sampled_lifetime"] > 2 * batch
    finally:
        algo.stop()


def test_resume_with_env_copies_out_of_step_is_exact(tmp_path):
    """3 env copies, 1000 steps a train(): the copies stop at different steps, and a restore still
    continues each exactly (the same weights as training on)."""
    config = single(seed=5).training(train_batch_size=1000).env_runners(num_envs_per_env_runner=3)
    algo = config.build()
    algo.train()
    path = algo.save(tmp_path / "ck").checkpoint.path
    algo.train()
    again = config.build()
    again.restore(path)
    again.train()
    assert_same_weights(weights(algo), weights(again))
    assert again.counters["num_env_steps_sampled_lifetime"] == 2000
    algo.stop()
    again.stop()


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_round_trip_is_exact(tmp_path, fmt, kind):
    algo = (single() if kind == "single" else multi()).build()
    algo.train()
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    clone = Algorithm.from_checkpoint(path)
    assert type(clone) is PPO and clone.iteration == 1
    assert_same_weights(weights(algo), weights(clone))
    for pid, policy in algo.policies.items():
        opt_a = policy.get_state()["optimizer"]
        opt_b = clone.policies[pid].get_state()["optimizer"]
        assert json.dumps(opt_a, default=lambda x: x.tolist()) == json.dumps(opt_b, default=lambda x: x.tolist())
    restored = (single(seed=9) if kind == "single" else multi(seed=9)).build()
    restored.restore(path)
    assert_same_weights(weights(algo), weights(restored))


def test_checkpoint_format_from_config(tmp_path):
    algo = single().checkpointing(format="msgpack").build()
    path = algo.save(tmp_path / "ck").checkpoint.path
    assert (tmp_path / "ck" / "algorithm_state.msgpck").exists()
    assert Algorithm.from_checkpoint(path, allow_pickle=False).iteration == 0


class UserCartPole(gym.Wrapper):
    """A user's env class, not registered: a portable checkpoint cannot name it."""

    def __init__(self, config=None):
        super().__init__(gym.make("CartPole-v1"))


def test_an_unregistered_env_class_is_asked_for(tmp_path):
    from amber.errors import UnregisteredNameError

    algo = PPOConfig().environment(UserCartPole).training(train_batch_size=64, num_epochs=1).build()
    algo.train()
    with pytest.warns(UserWarning, match="UserCartPole"):
        path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    with pytest.raises(UnregisteredNameError, match=r"without its env .*UserCartPole.*env=") as err:
        Algorithm.from_checkpoint(path, allow_pickle=False)
    assert str(tmp_path / "ck") in str(err.value)
    clone = Algorithm.from_checkpoint(path, allow_pickle=False, env=UserCartPole)
    assert clone.config.env is UserCartPole and clone.iteration == 1
    assert_same_weights(weights(algo), weights(clone))
    clone.train()


def test_default_save_dir_is_under_the_results_dir(tmp_path):
    algo = single().build()
    path = algo.save().checkpoint.path
    assert path.startswith(str(tmp_path / "results")) and os.path.isdir(path)


@pytest.mark.parametrize("url", ["s3://bucket/logs", "memory://bucket/logs"])
def test_a_url_logdir_is_refused_with_the_option_to_use(tmp_path, monkeypatch, url):
    """The logdir is local: a URL never becomes a local directory named 's3:' (docs/storage.md)."""
    monkeypatch.chdir(tmp_path)
    algo = single().build()
    with pytest.raises(ValueError, match=r"checkpointing\(storage_path="):
        algo.logdir = url
    assert not any(p.name.endswith(":") for p in tmp_path.iterdir())
    algo.logdir = f"file://{tmp_path}/logs"  # a file:// URL is its local path
    assert algo.logdir == str(tmp_path / "logs") and (tmp_path / "logs").is_dir()


# -- multi-agent ---------------------------------------------------------------------------------


def test_policies_to_train_leaves_the_others_unchanged():
    algo = multi(policies_to_train=["pol_a"]).build()
    before = weights(algo)
    algo.train()
    after = weights(algo)
    assert any(not np.array_equal(before["pol_a"][k], after["pol_a"][k]) for k in before["pol_a"])
    assert_same_weights({"pol_b": before["pol_b"]}, {"pol_b": after["pol_b"]})


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_subset_restore_survives_damage_to_other_policies(tmp_path, damage):
    algo = multi().build()
    algo.train()
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    victim = tmp_path / "ck" / "policies" / "pol_b" / "policy_state.msgpck"
    if damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(b"\0" * victim.stat().st_size)
    only_a = Algorithm.from_checkpoint(path, policy_ids=["pol_a"],
                                       policy_mapping_fn=lambda aid, ep, w, **kw: "pol_a")
    assert only_a.get_policy("pol_b") is None
    assert_same_weights({"pol_a": weights(algo)["pol_a"]}, weights(only_a))
    only_a.train()
    with pytest.raises(CorruptCheckpointError, match="pol_b"):
        Algorithm.from_checkpoint(path)


def test_add_and_remove_policy():
    algo = multi().build()
    algo.add_policy("pol_c", policy_mapping_fn=lambda aid, ep, w, **kw: "pol_c",
                    policies_to_train=["pol_c"])
    before = weights(algo)
    algo.train()
    assert set(algo.policies) == {"pol_a", "pol_b", "pol_c"}
    assert_same_weights({"pol_a": before["pol_a"]}, {"pol_a": weights(algo)["pol_a"]})
    algo.remove_policy("pol_c", policy_mapping_fn=pol_a_b, policies_to_train=["pol_a", "pol_b"])
    algo.train()
    assert set(algo.policies) == {"pol_a", "pol_b"}


def test_msgpack_lambda_mapping_is_asked_for_when_restoring(tmp_path):
    cfg = multi().multi_agent(policy_mapping_fn=lambda aid, ep, w, **kw: "pol_a")
    path = cfg.build().save(tmp_path / "ck", format="msgpack").checkpoint.path
    with pytest.raises(CheckpointError, match="policy_mapping_fn"):
        Algorithm.from_checkpoint(path)
    assert Algorithm.from_checkpoint(path, policy_mapping_fn=pol_a_b).get_policy("pol_a") is not None


def test_registered_mapping_is_stored_by_name(tmp_path):
    path = multi().build().save(tmp_path / "ck", format="msgpack").checkpoint.path
    assert Algorithm.from_checkpoint(path).config.policy_mapping_fn is pol_a_b


# -- policies ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_policy_from_policy_and_algorithm_checkpoints(tmp_path, fmt):
    algo = multi().build()
    algo.train()
    pol = algo.get_policy("pol_a")
    pol.export_checkpoint(tmp_path / "pol", format=fmt)
    restored = Policy.from_checkpoint(tmp_path / "pol")
    obs = np.array([0.0, 0.1, 0.2, 0.3], dtype=np.float32)
    assert restored.compute_single_action(obs, explore=False)[0] == pol.compute_single_action(obs, explore=False)[0]
    path = algo.save(tmp_path / "ck", format=fmt).checkpoint.path
    both = Policy.from_checkpoint(path)
    assert sorted(both) == ["pol_a", "pol_b"]
    assert list(Policy.from_checkpoint(path, policy_ids=["pol_b"])) == ["pol_b"]
    assert_same_weights({"pol_b": weights(algo)["pol_b"]}, {"pol_b": both["pol_b"].get_weights()})


@pytest.mark.parametrize("framework", ["jax", "TF2", "tf"])
def test_from_checkpoint_refuses_an_unknown_framework_before_reading(tmp_path, framework):
    """A bad argument is a ValueError naming the choices (as config.framework), not a bad checkpoint:
    checked before reading (the path need not exist)."""
    with pytest.raises(ValueError, match="choices: torch, tf2") as info:
        Algorithm.from_checkpoint(tmp_path / "nothing_here", framework=framework)
    assert not isinstance(info.value, CheckpointError)


def test_policy_ids_as_a_str_is_refused_with_the_list_to_pass(tmp_path):
    path = multi().build().save(tmp_path / "ck", format="msgpack").checkpoint.path
    with pytest.raises(TypeError, match=r"pass \['pol_a'\]"):
        Algorithm.from_checkpoint(path, policy_ids="pol_a")
    with pytest.raises(TypeError, match=r"pass \['pol_a'\]"):
        Policy.from_checkpoint(path, policy_ids="pol_a")
    with pytest.raises(TypeError, match="list of policy ids"):
        amber.checkpoint.read_checkpoint(path, policy_ids="pol_a")


# -- failed restore -----------------------------------------------------------------------------------


def test_failed_restore_leaves_the_algorithm_as_it_was(tmp_path):
    donor = multi(seed=1).build()
    donor.train()
    path = donor.save(tmp_path / "ck", format="msgpack").checkpoint.path
    victim = tmp_path / "ck" / "policies" / "pol_b" / "policy_state.msgpck"
    victim.write_bytes(victim.read_bytes()[:-10])
    algo = multi(seed=2).build()
    algo.train()
    before, it = weights(algo), algo.iteration
    with pytest.raises(CorruptCheckpointError, match="pol_b"):
        algo.restore(path)
    assert_same_weights(before, weights(algo))
    assert algo.iteration == it


class _MyPPO(PPO):
    """A user's own PPO: it restores PPO checkpoints, and PPO restores its."""


@pytest.mark.parametrize("fmt", ["msgpack", "pickle"])
def test_restore_refuses_another_kind_of_algorithm_and_names_both(tmp_path, fmt):
    from amber.algorithms.dqn import DQNConfig
    from amber.errors import InvalidStateError

    dqn = DQNConfig().environment("CartPole-v1").debugging(seed=0).build()
    path = dqn.save(tmp_path / "dqn", format=fmt).checkpoint.path
    dqn.stop()
    ppo = PPOConfig().environment("CartPole-v1").debugging(seed=0).build()
    before = weights(ppo)
    with pytest.raises(InvalidStateError, match=r"holds a DQN checkpoint and this algorithm is a PPO: "
                                                r"`Algorithm.from_checkpoint\(path\)`"):
        ppo.restore(path)
    assert_same_weights(before, weights(ppo))
    own = _MyPPO(config=PPOConfig().environment("CartPole-v1").debugging(seed=1))
    own.restore(ppo.save(tmp_path / "ppo", format=fmt).checkpoint.path)  # a subclass: restored
    assert_same_weights(before, weights(own))
    for algo in (ppo, own):
        algo.stop()


def test_restore_failing_while_applying_rolls_back(tmp_path, monkeypatch):
    donor = multi(seed=1).build()
    donor.train()
    path = donor.save(tmp_path / "ck").checkpoint.path
    algo = multi(seed=2).build()
    before = weights(algo)
    pol_b = algo.policies["pol_b"]
    real = type(pol_b).set_state
    calls = []

    def flaky(self, state):
        calls.append(self)
        if self is pol_b and len(calls) < 3:
            raise RuntimeError("disk gremlin")
        return real(self, state)

    monkeypatch.setattr(type(pol_b), "set_state", flaky)
    with pytest.raises(CheckpointError, match="does not fit what loads it: RuntimeError: disk gremlin"):
        algo.restore(path)
    assert_same_weights(before, weights(algo))


# -- exact resume across processes ------------------------------------------------------------------------

RESUME = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_algorithms import single, multi, weights
    from amber.algorithms.algorithm import Algorithm
    kind, fmt, phase, path, out = sys.argv[1:6]
    if phase == "first":
        algo = (single if kind == "single" else multi)(seed=7).build()
        for _ in range(2):
            algo.train()
        algo.save(path, format=fmt)
    else:
        algo = Algorithm.from_checkpoint(path)
        for _ in range(2):
            algo.train()
        np.savez(out, **{{f"{{pid}}/{{k}}": v for pid, w in weights(algo).items() for k, v in w.items()}})
""")


@pytest.mark.parametrize("fmt", [*FORMATS, "npz"])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, kind, fmt, request):
    """Every format, the third-party one included: k iterations, save, resume elsewhere, n-k more."""
    tests = os.path.dirname(__file__)
    script = RESUME.format(tests=tests)
    ck, out = tmp_path / "ck", tmp_path / "w.npz"
    env = dict(os.environ)
    if fmt == "npz":  # the pip-installed third-party plugin, found through its entry point
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(request.getfixturevalue("npz_site")),
                                                          env.get("PYTHONPATH")]))
    for phase in ("first", "second"):
        proc = subprocess.run([sys.executable, "-c", script, kind, fmt, phase, str(ck), str(out)],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
    algo = (single if kind == "single" else multi)(seed=7).build()
    for _ in range(4):
        algo.train()
    got = np.load(out)
    want = {f"{pid}/{k}": v for pid, w in weights(algo).items() for k, v in w.items()}
    assert sorted(got.files) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def test_a_private_plugin_manager_saves_and_resumes_exactly_in_process(contract_pm, tmp_path):
    """A third-party format known only to a private plugin manager, passed in through the config:
    save, from_checkpoint and restore all go through it, and resume is exact."""
    from amber.errors import UnknownFormatError
    from amber.plugin_manager import get_plugin_manager
    from amber.registry import get_registry
    from amber.utils.checkpoints import get_checkpoint_info

    with pytest.raises(UnknownFormatError):  # the in-tree plugins alone do not know it
        get_registry(get_plugin_manager(autoload=False)).get("npz")
    cfg = single(seed=3).checkpointing(format="npz", plugin_manager=contract_pm)
    algo = cfg.build()
    algo.train()
    path = algo.save(tmp_path / "ck").checkpoint.path
    assert get_checkpoint_info(path)["format"] == "npz"
    algo.train()
    want = weights(algo)
    clone = Algorithm.from_checkpoint(path, pm=contract_pm)
    assert clone.config.plugin_manager is contract_pm
    clone.train()
    assert_same_weights(want, weights(clone))
    again = cfg.build()
    again.restore(path)
    again.train()
    assert_same_weights(want, weights(again))
    assert clone.save(tmp_path / "ck2").checkpoint.path  # later saves keep using the private manager
    assert get_checkpoint_info(tmp_path / "ck2")["format"] == "npz"


@pytest.mark.parametrize("config,key,bad", [
    (PPOConfig, "num_epochs", 2.5), (PPOConfig, "lr", "fast"), (PPOConfig, "model", [64]),
    ("dqn", "double_q", "yes"), ("dqn", "hiddens", 256), ("sac", "tau", None), ("sac", "twin_q", 1),
])
def test_typed_hyperparameters_refuse_wrong_types(config, key, bad):
    from amber.algorithms.dqn import DQNConfig
    from amber.algorithms.sac import SACConfig

    cls = {"dqn": DQNConfig, "sac": SACConfig}.get(config, config)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: hyperparameter '{key}' must be"):
        cls().training(**{key: bad})
    assert key in cls.hyperparameter_types()


def test_typed_hyperparameters_take_their_defaults_and_good_values():
    from amber.algorithms.sac import SACConfig

    cfg = SACConfig().training(tau=1, target_entropy=-2.0, training_intensity=16, grad_clip=None)
    assert (cfg.tau, cfg.target_entropy, cfg.training_intensity, cfg.grad_clip) == (1, -2.0, 16, None)
    assert SACConfig().replay_buffer_config == {"capacity": 1_000_000}
    assert SACConfig().replay_buffer_config is not SACConfig().replay_buffer_config  # no shared default
    with pytest.raises(ValueError, match="did you mean minibatch_size"):
        PPOConfig().training(minibatchsize=3)


def test_a_counter_name_from_the_file_is_refused_and_leaves_nothing_behind(tmp_path):
    algo = single().build()
    state = algo.get_state()
    state["algorithm"]["components"]["progress"]["counters"]["__class__"] = 5
    before = dict(algo.counters)
    with pytest.raises(CheckpointError, match="unknown counter"):
        algo.set_state(state)
    assert algo.counters == before


@pytest.mark.parametrize(("config", "message"), [
    (lambda: PPOConfig().training(model={"fcnet_hiddenz": [8]}), "unknown model key 'fcnet_hiddenz'"),
    (lambda: PPOConfig().training(model={"fcnet_hiddens": "64"}), "fcnet_hiddens must be a list of layer sizes"),
    (lambda: PPOConfig().training(model={"fcnet_activation": "gelu"}), "fcnet_activation must be one of"),
    (lambda: PPOConfig().training(model={"vf_share_layers": True}), "vf_share_layers=True is not supported"),
    (lambda: PPOConfig().multi_agent(policies={"a": PolicySpec(config={"model": {"fcnet_hiddens": [0]}})},
                                     policy_mapping_fn=lambda *a, **k: "a"), "policies['a'] model fcnet_hiddens"),
    (lambda: PPOConfig().training(num_epochs=0), "num_epochs must be a positive integer, got 0"),
    (lambda: PPOConfig().training(train_batch_size=0), "train_batch_size must be a positive integer"),
    (lambda: PPOConfig().training(grad_clip=-1.0), "grad_clip must be None or a positive number, got -1.0"),
    (lambda: PPOConfig().training(gamma=5.0), "gamma must be in [0, 1], got 5.0"),
    (lambda: DQNConfig().training(lr=-1.0), "DQNConfig: lr must be a positive number"),
], ids=["model-typo", "hiddens-str", "activation", "rllib-option-on", "policy-model", "num-epochs",
        "batch", "grad-clip", "gamma", "dqn-lr"])
def test_a_setting_amber_would_not_build_as_written_is_refused_when_built(config, message):
    """Not a failure in the first train(), a run that never ends, or the default network built
    in silence (api.md: unknown keys are a clear error naming the key)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        config().environment("CartPole-v1").build()


def test_settings_are_checked_together_when_built_not_by_an_unrelated_setter():
    """A fluent chain may pass through a value it corrects later: .checkpointing() or
    .env_runners() does not judge the training settings (validate() does, at build)."""
    config = (PPOConfig().environment("CartPole-v1").training(lr=0.0)
              .checkpointing(num_to_keep=2, format="msgpack").training(lr=1e-3))
    config.validate()
    assert (config.lr, config.num_to_keep, config.checkpoint_format) == (1e-3, 2, "msgpack")


def test_rllib_model_options_at_what_amber_builds_port_unchanged():
    algo = PPOConfig().environment("CartPole-v1").training(model={
        "fcnet_hiddens": [8], "fcnet_activation": "ReLU", "vf_share_layers": False, "use_lstm": False,
        "post_fcnet_hiddens": [], "conv_filters": None}).build()
    try:
        assert [m.out_features for m in algo.get_policy().model.pi if hasattr(m, "out_features")] == [8, 2]
    finally:
        algo.stop()
