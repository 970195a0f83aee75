"""Reading RLlib 2.10's own msgpack checkpoints without Ray (amber.plugins.rllib_compat).

The fixtures in tests/fixtures/rllib-2.10 were written by RLlib 2.10.0 itself
(see its README.md); expected.json holds what RLlib computed with them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest

from amber.algorithms.algorithm import Algorithm
from amber.checkpoint import read_checkpoint
from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnknownPolicyError,
    UnsafeContentError,
    UnsupportedVersionError,
)
from amber.migration import CHECKPOINT_VERSION
from amber.policy.policy import Policy
from amber.utils.checkpoints import get_checkpoint_info, migrate, migrate_checkpoint, verify

FIXTURES = Path(__file__).parent / "fixtures" / "rllib-2.10"
PPO, MA, DQN = FIXTURES / "ppo_msgpack", FIXTURES / "ma_msgpack", FIXTURES / "dqn_msgpack"
SAC = FIXTURES / "sac_msgpack"
POLICY, PICKLE = FIXTURES / "ppo_policy_msgpack", FIXTURES / "ppo_pickle"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
OBS = np.array(EXPECTED["observations"], dtype=np.float32)
PENDULUM_OBS = np.array(EXPECTED["pendulum_observations"], dtype=np.float32)
TOL = 1e-5


def mapping(agent_id, episode, worker, **kw):
    return "pol0" if agent_id == 0 else "pol1"


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def _sources_unchanged():
    """Nothing in this module may change a byte of the RLlib checkpoints it reads."""
    before = _digest(FIXTURES)
    yield
    assert _digest(FIXTURES) == before


def _check_ppo(policy, expected):
    actions, _, extra = policy.compute_actions(OBS, explore=False)
    assert actions.tolist() == expected["actions"]
    np.testing.assert_allclose(extra["action_dist_inputs"], expected["logits"], atol=TOL, rtol=0)
    np.testing.assert_allclose(extra["vf_preds"], expected["vf"], atol=TOL, rtol=0)
    for obs, action in zip(OBS, expected["actions"], strict=True):
        assert policy.compute_single_action(obs, explore=False)[0] == action


def _check_dqn(policy, expected):
    actions, _, extra = policy.compute_actions(OBS, explore=False)
    assert actions.tolist() == expected["actions"]
    np.testing.assert_allclose(extra["q_values"], expected["q_values"], atol=TOL, rtol=0)
    np.testing.assert_allclose(policy.compute_q_values(OBS[:1]), expected["q_values"][:1], atol=TOL, rtol=0)


def _check_sac(policy, expected):
    actions, _, extra = policy.compute_actions(PENDULUM_OBS, explore=False)
    np.testing.assert_allclose(extra["action_dist_inputs"], expected["dist_inputs"], atol=TOL, rtol=0)
    # RLlib's policy returns actions squashed into [-1, 1]; the env gets them rescaled into [-2, 2].
    np.testing.assert_allclose(actions, 2.0 * np.array(expected["actions"]), atol=2 * TOL, rtol=0)


def _counters(algo, expected):
    assert algo.iteration == expected["iteration"]
    c = expected["counters"]
    assert algo.counters["num_env_steps_sampled_lifetime"] == c["num_env_steps_sampled"]
    assert algo.counters["num_env_steps_trained_lifetime"] == c["num_env_steps_trained"]
    assert algo.counters["num_agent_steps_sampled_lifetime"] == c["num_agent_steps_sampled"]


# -- PPO ------------------------------------------------------------------------------------------


def test_ppo_restores_rllibs_outputs_counters_and_trains_on():
    algo = Algorithm.from_checkpoint(PPO)
    assert type(algo).__name__ == "PPO" and algo.config.env == "CartPole-v1"
    cfg = algo.config
    assert (cfg.train_batch_size, cfg.minibatch_size, cfg.num_epochs, cfg.lambda_, cfg.clip_param, cfg.lr) == \
        (400, 100, 2, 1.0, 0.3, 5e-5)
    assert cfg.model == {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"} and cfg.seed == 0
    policy = algo.get_policy()
    assert policy.global_timestep == EXPECTED["ppo"]["counters"]["num_env_steps_sampled"]  # as saved
    _check_ppo(policy, EXPECTED["ppo"])
    _counters(algo, EXPECTED["ppo"])
    assert policy.optimizer.state_dict()["state"], "RLlib's Adam moments are carried over"
    assert algo.kl_coeffs["default_policy"] == pytest.approx(0.1)
    before = policy.get_weights()
    result = algo.train()
    assert result["training_iteration"] == EXPECTED["ppo"]["iteration"] + 1
    assert result["num_env_steps_sampled_lifetime"] == EXPECTED["ppo"]["counters"]["num_env_steps_sampled"] + 400
    assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())
    algo.stop()


# -- multi-agent ----------------------------------------------------------------------------------


def test_multi_agent_restores_every_policy_with_the_mapping_fn():
    algo = Algorithm.from_checkpoint(MA, policy_mapping_fn=mapping)
    assert sorted(algo.policies) == ["pol0", "pol1"]
    assert algo.config.env.__name__ == "MultiAgentCartPole" and algo.config.env_config == {"num_agents": 2}
    for pid in ("pol0", "pol1"):
        _check_ppo(algo.get_policy(pid), EXPECTED["ma"][pid])
    _counters(algo, EXPECTED["ma"])
    assert algo.train()["training_iteration"] == 2
    algo.stop()


def test_multi_agent_without_mapping_fn_asks_for_it():
    with pytest.raises(CheckpointError, match="policy_mapping_fn="):
        Algorithm.from_checkpoint(MA)


def test_policy_ids_subset_reads_only_those_files(monkeypatch):
    import amber.plugins.rllib_compat.reader as reader

    opened = []
    real = reader.decode_msgpack
    monkeypatch.setattr(reader, "decode_msgpack", lambda path, **kw: opened.append(Path(path)) or real(path, **kw))
    algo = Algorithm.from_checkpoint(MA, policy_ids=["pol1"], policy_mapping_fn=lambda aid, *a, **kw: "pol1")
    assert algo.get_policy("pol0") is None and list(algo.policies) == ["pol1"]
    assert not [p for p in opened if "pol0" in p.parts]
    _check_ppo(algo.get_policy("pol1"), EXPECTED["ma"]["pol1"])
    algo.train()
    with pytest.raises(UnknownPolicyError, match="pol0, pol1"):
        read_checkpoint(MA, policy_ids=["nope"])


# -- DQN -------------------------------------------------------------------------------------------


def test_dqn_restores_q_values_and_trains_on():
    algo = Algorithm.from_checkpoint(DQN)
    cfg = algo.config
    assert (cfg.hiddens, cfg.dueling, cfg.double_q, cfg.n_step, cfg.target_network_update_freq) == \
        ([256], True, True, 1, 500)
    assert cfg.epsilon == [(0, 1.0), (10_000, 0.02)] and cfg.replay_buffer_config["capacity"] == 50_000
    assert cfg.model == {"fcnet_hiddens": [256, 256], "fcnet_activation": "tanh"}
    assert cfg.rollout_fragment_length == 1  # RLlib's "auto": its n_step env steps per round, not amber's 4
    policy = algo.get_policy()
    _check_dqn(policy, EXPECTED["dqn"])
    _counters(algo, EXPECTED["dqn"])
    # RLlib syncs the target network to the Q network on restore; so does the migration.
    assert all(np.array_equal(v, policy.get_weights()[k]) for k, v in policy.get_target_weights().items())
    assert policy.cur_epsilon == pytest.approx(1.0 - 0.98 * 1001 / 10_000)
    before = policy.get_weights()
    result = algo.train()
    assert result["num_updates_lifetime"] >= 1
    assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())
    algo.stop()


# -- SAC -------------------------------------------------------------------------------------------


def test_sac_restores_the_actor_and_trains_on():
    algo = Algorithm.from_checkpoint(SAC)
    cfg = algo.config
    assert (cfg.tau, cfg.twin_q, cfg.initial_alpha, cfg.target_entropy, cfg.actor_lr) == \
        (0.005, True, 1.0, "auto", 3e-4)
    assert cfg.model == {"fcnet_hiddens": [256, 256], "fcnet_activation": "relu"}
    policy = algo.get_policy()
    _check_sac(policy, EXPECTED["sac"])
    _counters(algo, EXPECTED["sac"])
    weights = policy.get_weights()
    assert all(np.array_equal(weights[f"q{i}_target.{k}"], weights[f"q{i}.{k}"])
               for i in (1, 2) for k in ("0.weight", "4.bias"))
    assert {k: len(v["state"]) for k, v in policy.get_state()["optimizers"].items()} == \
        {"actor": 6, "critic": 12, "alpha": 1}
    assert policy.alpha != 1.0  # RLlib's learned temperature, not a fresh one
    before = policy.get_weights()
    assert algo.train()["num_updates_lifetime"] >= 1
    assert any(not np.array_equal(before[k], v) for k, v in policy.get_weights().items())
    algo.stop()


# -- Policy.from_checkpoint ---------------------------------------------------------------------------


def test_policy_from_an_algorithm_dir_and_from_a_policy_dir():
    policies = Policy.from_checkpoint(MA)
    assert sorted(policies) == ["pol0", "pol1"]
    for pid, policy in policies.items():
        _check_ppo(policy, EXPECTED["ma"][pid])
    assert list(Policy.from_checkpoint(MA, policy_ids=["pol0"])) == ["pol0"]
    _check_dqn(Policy.from_checkpoint(DQN)["default_policy"], EXPECTED["dqn"])
    policy = Policy.from_checkpoint(POLICY)
    assert isinstance(policy, Policy)
    _check_ppo(policy, EXPECTED["ppo"])
    _check_ppo(Policy.from_checkpoint(PPO / "policies" / "default_policy"), EXPECTED["ppo"])


# -- migrate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ppo", "dqn", "ma", "sac", "policy"])
def test_migrate_writes_a_current_amber_checkpoint(name, tmp_path):
    src = {"ppo": PPO, "dqn": DQN, "ma": MA, "sac": SAC, "policy": POLICY}[name]
    dst = tmp_path / "migrated"
    steps = migrate_checkpoint(src, dst)
    assert steps[:2] == ["rllib-1.1 -> 1.0", "1.0 -> 2.0"] and steps[-1].endswith(f"-> {CHECKPOINT_VERSION}")
    assert verify(dst).ok
    assert get_checkpoint_info(dst)["checkpoint_version"] == CHECKPOINT_VERSION
    if name == "policy":
        _check_ppo(Policy.from_checkpoint(dst), EXPECTED["ppo"])
        return
    algo = Algorithm.from_checkpoint(dst, policy_mapping_fn=mapping if name == "ma" else None)
    for pid, policy in algo.policies.items():
        if name in ("dqn", "sac"):
            (_check_dqn if name == "dqn" else _check_sac)(policy, EXPECTED[name])
        else:
            _check_ppo(policy, EXPECTED[name] if name == "ppo" else EXPECTED["ma"][pid])
    _counters(algo, EXPECTED[name])
    algo.stop()


@pytest.mark.parametrize("name", ["ppo", "dqn", "ma", "sac"])
def test_migrate_to_1_0_writes_a_1_0_checkpoint_amber_reads(name, tmp_path):
    """--to 1.0 stops after the RLlib step: amber's default classes (callbacks_class) are written
    as 1.0 import paths, and the checkpoint reads back as the RLlib one does."""
    src = {"ppo": PPO, "dqn": DQN, "ma": MA, "sac": SAC}[name]
    dst = tmp_path / "v10"
    migrate(src, dst, to="1.0")
    assert get_checkpoint_info(dst)["checkpoint_version"] == "1.0"
    algo = Algorithm.from_checkpoint(dst, policy_mapping_fn=mapping if name == "ma" else None)
    try:
        assert type(algo.callbacks).__name__ == "DefaultCallbacks"
        _counters(algo, EXPECTED[name])
    finally:
        algo.stop()


def test_migrate_dry_run_describes_each_step_and_writes_nothing(tmp_path):
    result = migrate(PPO, tmp_path / "x", dry_run=True)
    assert [s["name"] for s in result.steps][:2] == ["rllib-1.1 -> 1.0", "1.0 -> 2.0"]
    assert "sgd_minibatch_size -> minibatch_size" in result.steps[0]["description"]
    assert not result.written and not (tmp_path / "x").exists()


def test_rllib_1_0_is_read_through_the_no_op_step(tmp_path):
    src = tmp_path / "v10"
    shutil.copytree(POLICY, src)
    raw = json.loads((src / "rllib_checkpoint.json").read_text())
    raw["checkpoint_version"] = "1.0"
    del raw["format"]  # 1.0 had no format field: the state file's extension says it
    (src / "rllib_checkpoint.json").write_text(json.dumps(raw))
    ckpt = read_checkpoint(src)
    assert ckpt.migrations_applied[:3] == ["rllib-1.0 -> rllib-1.1", "rllib-1.1 -> 1.0", "1.0 -> 2.0"]
    _check_ppo(Policy.from_checkpoint(src), EXPECTED["ppo"])


# -- refusals and corrupt files ------------------------------------------------------------------------


def test_pickle_checkpoint_is_refused_with_the_convert_hint(tmp_path):
    with pytest.raises(UnsafeContentError, match="convert_to_msgpack_checkpoint") as e:
        Algorithm.from_checkpoint(PICKLE)
    assert str(PICKLE) in str(e.value) and isinstance(e.value, CheckpointError)
    with pytest.raises(UnsafeContentError, match="convert_to_msgpack"):
        migrate_checkpoint(PICKLE, tmp_path / "never-written")
    assert not (tmp_path / "never-written").exists()


def _policy_copy(tmp_path) -> Path:
    dst = tmp_path / "pol"
    shutil.copytree(POLICY, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "garbage", "trailing", "empty"])
def test_corrupt_msgpack_names_the_file(tmp_path, damage):
    src = _policy_copy(tmp_path)
    state = src / "policy_state.msgpck"
    data = state.read_bytes()
    state.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xc1\xff\x00garbage" * 50,
                       "trailing": data + b"\x00", "empty": b""}[damage])
    with pytest.raises(CorruptCheckpointError, match="policy_state.msgpck") as e:
        Policy.from_checkpoint(src)
    assert str(state) in str(e.value)


def _nd(array: np.ndarray, override: dict) -> dict:
    """msgpack-numpy's encoding of an array, with some fields replaced."""
    return {b"nd": True, b"type": array.dtype.str, b"kind": b"", b"shape": list(array.shape),
            b"data": array.tobytes(), **override}


@pytest.mark.parametrize("bad", ["object", "void", "short_data", "bad_shape"])
def test_unsafe_or_malformed_arrays_are_refused(tmp_path, monkeypatch, bad):
    import pickle

    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    src = _policy_copy(tmp_path)
    a = np.zeros(3, np.float32)
    node = {"object": _nd(a, {b"type": "|O", b"kind": b"O", b"data": pickle.dumps([1])}),
            "void": _nd(a, {b"type": [["x", "<f4"]], b"kind": b"V"}),
            "short_data": _nd(a, {b"data": b"\x00" * 5}),
            "bad_shape": _nd(a, {b"shape": [-3]})}[bad]
    (src / "policy_state.msgpck").write_bytes(msgpack.packb({"weights": {"w": node}, "policy_spec": {}}))
    with pytest.raises(CorruptCheckpointError, match="policy_state.msgpck"):
        Policy.from_checkpoint(src)


@pytest.mark.parametrize(("content", "error", "match"), [
    ("{not json", CorruptCheckpointError, "not valid JSON"),
    ("[1, 2]", CorruptCheckpointError, "JSON object"),
    ('{"type": "Algorithm"}', CorruptCheckpointError, "checkpoint_version"),
    ('{"type": "Trainer", "checkpoint_version": "1.1", "format": "msgpack"}', CorruptCheckpointError, "type"),
    ('{"type": "Policy", "checkpoint_version": "1.1", "format": "yaml"}', CorruptCheckpointError, "format"),
    ('{"type": "Policy", "checkpoint_version": "1.2", "format": "msgpack"}', UnsupportedVersionError, "1.2"),
    ('{"type": "Policy", "checkpoint_version": "1.1", "format": "msgpack", "state_file": "../x.msgpck"}',
     CorruptCheckpointError, "state_file"),
])
def test_malformed_manifest_names_the_path(tmp_path, content, error, match):
    src = _policy_copy(tmp_path)
    (src / "rllib_checkpoint.json").write_text(content)
    with pytest.raises(error, match=match) as e:
        Policy.from_checkpoint(src)
    assert str(src) in str(e.value)


def test_malformed_algorithm_parts_name_the_path(tmp_path):
    src = tmp_path / "dqn"
    shutil.copytree(DQN, src)
    raw = json.loads((src / "rllib_checkpoint.json").read_text())
    (src / "rllib_checkpoint.json").write_text(json.dumps({**raw, "policy_ids": ["../escape"]}))
    with pytest.raises(CorruptCheckpointError, match="policy id"):
        read_checkpoint(src)
    (src / "rllib_checkpoint.json").write_text(json.dumps(raw))
    (src / "algorithm_state.msgpck").write_bytes(msgpack.packb([1, 2, 3]))
    with pytest.raises(CorruptCheckpointError, match="algorithm_state.msgpck"):
        Algorithm.from_checkpoint(src)
    shutil.rmtree(src / "policies" / "default_policy")
    with pytest.raises(CorruptCheckpointError, match="default_policy"):
        read_checkpoint(src)


# -- what amber cannot build, and what it does not carry over --------------------------------------


def _encode(value):
    """msgpack-numpy's encoding, as RLlib writes arrays and numpy scalars."""
    if isinstance(value, np.ndarray):
        return {b"nd": True, b"type": value.dtype.str, b"kind": b"", b"shape": list(value.shape),
                b"data": value.tobytes()}
    if isinstance(value, np.generic):
        return {b"nd": False, b"type": value.dtype.str, b"data": value.tobytes()}
    raise TypeError(type(value))


def _rewritten(src: Path, tmp_path: Path, rel: str, change) -> Path:
    from amber.plugins.rllib_compat.decode import decode_msgpack

    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    tree = decode_msgpack(dst / rel)
    change(tree)
    (dst / rel).write_bytes(msgpack.packb(tree, default=_encode, use_bin_type=True))
    return dst


@pytest.mark.parametrize(("option", "value", "match"), [
    ("use_lstm", True, "use_lstm"),
    ("vf_share_layers", True, "vf_share_layers"),
    ("fcnet_activation", "swish", "swish"),
    ("fcnet_hiddens", [64], r"hidden layers \[256, 256\] do not match"),
])
def test_models_amber_cannot_build_are_refused(tmp_path, option, value, match):
    from amber.errors import MigrationError

    src = _rewritten(POLICY, tmp_path, "policy_state.msgpck",
                     lambda tree: tree["policy_spec"]["config"]["model"].update({option: value}))
    with pytest.raises(MigrationError, match=match) as e:
        Policy.from_checkpoint(src)
    assert str(src) in str(e.value)


def test_settings_amber_does_not_implement_warn(tmp_path):
    from amber.plugins.rllib_compat import NotCarriedOverWarning

    src = _rewritten(DQN, tmp_path, "algorithm_state.msgpck",
                     lambda tree: tree["config"].update(lr_schedule=[[0, 1e-3], [100, 1e-4]], tau=0.5))
    with pytest.warns(NotCarriedOverWarning, match="lr_schedule, tau"):
        algo = Algorithm.from_checkpoint(src)
    _check_dqn(algo.get_policy(), EXPECTED["dqn"])  # the re-encoded checkpoint reads as RLlib's own
