"""amber.serve: a policy served from a checkpoint or an ONNX export acts as the torch policy does, without torch.

Real PPO (Discrete and Box actions), DQN and SAC policies with tiny networks
are saved (algorithm and policy checkpoints, msgpack) and exported (ONNX);
each served copy is compared with the torch policy on many observations,
batched and one at a time. Then the errors, the old and foreign checkpoints,
and a fresh process that must import no torch, tensorflow, gymnasium or
cloudpickle.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gym = pytest.importorskip("gymnasium")

import amber  # noqa: E402
from amber.algorithms.dqn import DQNConfig  # noqa: E402
from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy  # noqa: E402
from amber.algorithms.ppo import PPOConfig  # noqa: E402
from amber.algorithms.sac import SACConfig  # noqa: E402
from amber.envs import MultiAgentCartPole  # noqa: E402
from amber.errors import (  # noqa: E402
    CheckpointError,
    CorruptCheckpointError,
    InvalidStateError,
    MissingPluginError,
    NotACheckpointError,
    UnknownPolicyError,
    UnsafeContentError,
)
from amber.policy.policy import Policy  # noqa: E402
from amber.policy.torch_policy import TorchPolicy  # noqa: E402
from amber.serve import (  # noqa: E402
    PickleCheckpointError,
    PolicyChoiceError,
    ServedPolicy,
    UnservablePolicyError,
    load_policy,
)

#: Served outputs agree with the torch policy's within this (float32).
TOL = 1e-5
FIXTURES = Path(__file__).parent / "fixtures"
FORBIDDEN = ("torch", "tensorflow", "gymnasium", "cloudpickle", "keras")
#: The onnx extra: exporting (onnx) and serving (onnxruntime) ONNX models.
HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def serve_mapping(agent_id, episode, worker, **kw):
    """Agent i → policy ``p{i}``."""
    return f"p{agent_id}"


amber.register_class(serve_mapping, name="tests.serve.serve_mapping")


# --------------------------------------------------------------------------
# the policies, saved and exported once
# --------------------------------------------------------------------------


def scale_weights(policy, factor: float, seed: int) -> None:
    """Weights of a useful size: greedy actions are not near-ties, Gaussian means leave the bounds,
    and SAC's log_std is clipped."""
    rng = np.random.default_rng(seed)
    policy.set_weights({k: (rng.standard_normal(np.shape(v)) * factor / np.sqrt(np.shape(v)[-1]))
                        .astype(np.float32) if np.ndim(v) else v for k, v in policy.get_weights().items()})


def _algorithms():
    """Each case's algorithm (None: a policy built directly) or policy."""
    ppo = (PPOConfig().environment("CartPole-v1").debugging(seed=0)
           .training(model={"fcnet_hiddens": [16, 16]}, train_batch_size=64, minibatch_size=32, num_epochs=1))
    return {
        "ppo_cartpole": ppo.build(),
        "ppo_pendulum": PPOConfig().environment("Pendulum-v1").debugging(seed=1)
        .training(model={"fcnet_hiddens": [16, 16], "fcnet_activation": "relu"}).build(),
        "dqn_cartpole": DQNConfig().environment("CartPole-v1").debugging(seed=2)
        .training(model={"fcnet_hiddens": [16, 16]}, hiddens=[8], dueling=True).build(),
        "sac_pendulum": SACConfig().environment("Pendulum-v1").debugging(seed=3)
        .training(model={"fcnet_hiddens": [16, 16]}).build(),
        # one-hot observations with a start, Box actions of shape (2, 3), linear layers
        "ppo_onehot": TorchPolicy(gym.spaces.Discrete(6, start=-2), gym.spaces.Box(-1.0, 1.0, (2, 3), np.float32),
                                  {"model": {"fcnet_hiddens": [8], "fcnet_activation": "linear"}, "seed": 4}),
        # no trunk, a plain Q head with a relu layer, actions from 1
        "dqn_plain": DQNTorchPolicy(gym.spaces.Discrete(5), gym.spaces.Discrete(3, start=1),
                                    {"model": {"fcnet_hiddens": []}, "dueling": False, "hiddens": [5], "seed": 5}),
    }


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``{case: (torch policy, {source: path})}``; sources: algorithm, policy (checkpoints), onnx
    (where the onnx extra is installed)."""
    root = tmp_path_factory.mktemp("serve-zoo")
    out = {}
    for i, (name, built) in enumerate(_algorithms().items()):
        paths = {}
        if isinstance(built, Policy):
            policy = built
        else:
            if name == "ppo_cartpole":
                built.train()  # one real iteration: optimizer state, counters
            policy = built.get_policy()
        scale_weights(policy, 2.0, i)
        if not isinstance(built, Policy):
            paths["algorithm"] = Path(built.save(root / f"{name}-algo", format="msgpack").checkpoint.path)
            built.stop()
        paths["policy"] = Path(policy.export_checkpoint(root / f"{name}-policy", format="msgpack"))
        if HAVE_ONNX:
            policy.export_model(root / f"{name}-onnx", onnx=17)
            paths["onnx"] = root / f"{name}-onnx"
        out[name] = (policy, paths)
    return out


def observations(policy, n: int, seed: int) -> np.ndarray:
    """``n`` observations of the policy's space (Box: normal of scale 1.5)."""
    rng = np.random.default_rng(seed)
    space = policy.observation_space
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, size=n)
    return (rng.standard_normal((n, *space.shape)) * 1.5).astype(np.float32)


def assert_same_action(want, got, discrete: bool) -> None:
    if discrete:
        assert type(got) is type(want) and got == want
    else:
        assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


def assert_same_info(want: dict, got: dict) -> None:
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=TOL, atol=TOL, err_msg=key)


def assert_acts_like(policy, served: ServedPolicy, seed: int = 0) -> None:
    """Batched and single greedy actions and info of ``served`` are the torch ``policy``'s."""
    discrete = isinstance(policy.action_space, gym.spaces.Discrete)
    obs = observations(policy, 200, seed)
    want, _, want_info = policy.compute_actions(obs, explore=False)
    got, state_outs, got_info = served.compute_actions(obs, explore=False)
    assert state_outs == [] and got.shape == want.shape and got.dtype == want.dtype
    if discrete:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    assert_same_info(want_info, got_info)
    for one in obs[:25]:
        action, state_outs, info = policy.compute_single_action(one, explore=False)
        served_action, served_state, served_info = served.compute_single_action(one, explore=False)
        assert served_state == state_outs == []
        assert_same_action(action, served_action, discrete)
        assert_same_info(info, served_info)


# --------------------------------------------------------------------------
# served = torch
# --------------------------------------------------------------------------

CASES = ["ppo_cartpole", "ppo_pendulum", "dqn_cartpole", "sac_pendulum", "ppo_onehot", "dqn_plain"]
#: The cases whose policy is built directly: they have no algorithm checkpoint.
DIRECT = ("ppo_onehot", "dqn_plain")


@pytest.mark.parametrize(("case", "source"), [(case, source) for case in CASES
                                              for source in ("algorithm", "policy", "onnx")
                                              if not (source == "algorithm" and case in DIRECT)])
def test_served_policy_acts_as_the_torch_policy(zoo, case, source):
    policy, paths = zoo[case]
    if source == "onnx" and not HAVE_ONNX:
        pytest.skip("the onnx extra is not installed")
    served = load_policy(paths[source])
    assert served.policy_id == "default_policy"
    assert_acts_like(policy, served)


def test_the_spaces_are_described(zoo):
    served = load_policy(zoo["ppo_onehot"][1]["policy"])
    assert served.observation_space == {"type": "Discrete", "n": 6, "start": -2}
    act = served.action_space
    assert act["type"] == "Box" and act["shape"] == (2, 3) and act["dtype"] == "float32"
    np.testing.assert_array_equal(act["low"], -np.ones((2, 3), np.float32))
    pendulum = load_policy(zoo["sac_pendulum"][1]["policy"]).observation_space
    assert pendulum["shape"] == (3,) and pendulum["high"].tolist() == [1.0, 1.0, 8.0]


def test_box_actions_are_the_gaussian_mean_unless_clipped(zoo):
    """As the torch policy: the greedy action is the mean (the env runner clips); clip_actions clips."""
    policy, paths = zoo["ppo_pendulum"]
    served = load_policy(paths["policy"])
    obs = observations(policy, 200, 1)
    raw, _, _ = served.compute_actions(obs)
    assert np.abs(raw).max() > 2.0, "the scaled weights should push some means out of [-2, 2]"
    clipped, _, _ = served.compute_actions(obs, clip_actions=True)
    np.testing.assert_array_equal(clipped, np.clip(raw, -2.0, 2.0))
    sac, _, _ = load_policy(zoo["sac_pendulum"][1]["policy"]).compute_actions(obs)
    assert np.abs(sac).max() <= 2.0


def test_explore_samples_reproducibly_with_a_seed(zoo):
    for case in CASES:
        policy, paths = zoo[case]
        obs = observations(policy, 64, 2)
        a, _, info = load_policy(paths["policy"], seed=7).compute_actions(obs, explore=True)
        b, _, _ = load_policy(paths["policy"], seed=7).compute_actions(obs, explore=True)
        np.testing.assert_array_equal(a, b)
        if isinstance(policy.action_space, gym.spaces.Discrete):
            assert all(policy.action_space.contains(int(x)) for x in a)
        if "action_logp" in info:
            assert np.all(np.isfinite(info["action_logp"]))
    sac_policy, sac_paths = zoo["sac_pendulum"]
    sac, _, _ = load_policy(sac_paths["policy"]).compute_actions(observations(sac_policy, 64, 2), explore=True)
    assert np.abs(sac).max() <= 2.0
    dqn = load_policy(zoo["dqn_plain"][1]["policy"], seed=0)
    dqn.epsilon = 1.0
    actions, _, _ = dqn.compute_actions(np.zeros(300, np.int64), explore=True)
    assert set(actions.tolist()) == {1, 2, 3}


def test_sampled_logp_is_the_torch_distributions(zoo):
    from amber.models.torch_distributions import TorchCategorical, TorchDiagGaussian

    for case, dist in (("ppo_cartpole", TorchCategorical), ("ppo_pendulum", TorchDiagGaussian)):
        policy, paths = zoo[case]
        obs = observations(policy, 50, 3)
        actions, _, info = load_policy(paths["policy"], seed=3).compute_actions(obs, explore=True)
        torch_dist = dist(torch.from_numpy(info["action_dist_inputs"]))
        taken = actions if case == "ppo_cartpole" else actions.reshape(len(actions), -1)
        want = torch_dist.logp(torch.from_numpy(taken)).numpy()
        np.testing.assert_allclose(info["action_logp"], want, rtol=TOL, atol=TOL)


def test_log_std_bounds_are_sacs():
    from amber.algorithms.sac import sac_torch_policy
    from amber.models import numpy_distributions

    assert (numpy_distributions.LOG_STD_MIN, numpy_distributions.LOG_STD_MAX) == (
        sac_torch_policy.LOG_STD_MIN, sac_torch_policy.LOG_STD_MAX)


def test_observations_of_the_wrong_shape_are_refused(zoo):
    served = load_policy(zoo["ppo_cartpole"][1]["policy"])
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        served.compute_single_action([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one integer"):
        load_policy(zoo["dqn_plain"][1]["policy"]).compute_actions(np.zeros((3, 2)))


@pytest.mark.parametrize("bad", [-3, 4])
def test_a_discrete_observation_outside_its_space_is_refused(zoo, bad):
    """Discrete(6, start=-2) holds -2..3: another value one-hot encodes to zeros, and the network
    acted on that in silence (the torch policy as the served ones, from a checkpoint and from an
    ONNX export, whose graph itself cannot refuse it)."""
    policy, sources = zoo["ppo_onehot"]
    served = load_policy(sources["policy"])
    assert served.compute_single_action(3)[0].shape == (2, 3)  # the last value is in the space
    onnx = [load_policy(sources["onnx"])] if HAVE_ONNX else []
    for acting in (served, policy, *onnx):
        with pytest.raises(ValueError, match=rf"observation {bad} is not in the observation space "
                                             r"\(Discrete: -2 to 3\)"):
            acting.compute_actions(np.array([0, bad, 1]))


@pytest.mark.parametrize("source", ["policy", "onnx"])
def test_explore_none_is_the_algorithms_default_exploration(zoo, source):
    """As for the torch policy, explore=None explores as the algorithm does by default: for PPO,
    DQN and SAC, as explore=True (same seed, same actions); the default stays greedy."""
    if source == "onnx" and not HAVE_ONNX:
        pytest.skip("the onnx extra is not installed")
    for case in ("ppo_cartpole", "ppo_pendulum", "sac_pendulum"):
        policy, paths = zoo[case]
        obs = observations(policy, 200, 4)
        sampled, _, info = load_policy(paths[source], seed=5).compute_actions(obs, explore=True)
        default, _, default_info = load_policy(paths[source], seed=5).compute_actions(obs, explore=None)
        np.testing.assert_array_equal(default, sampled)
        assert_same_info(info, default_info)
        greedy, _, _ = load_policy(paths[source], seed=5).compute_actions(obs)
        assert not np.array_equal(default, greedy), case
        singles = load_policy(paths[source], seed=5)
        firsts = [singles.compute_single_action(one, explore=None)[0] for one in obs[:20]]
        again = load_policy(paths[source], seed=5)
        np.testing.assert_array_equal(firsts, [again.compute_single_action(one, explore=True)[0]
                                               for one in obs[:20]])
    dqn = load_policy(zoo["dqn_plain"][1][source], seed=0)
    dqn.epsilon = 1.0  # epsilon-greedy with its epsilon, as explore=True
    assert set(dqn.compute_actions(np.zeros(300, np.int64), explore=None)[0].tolist()) == {1, 2, 3}
    assert set(dqn.compute_actions(np.zeros(300, np.int64))[0].tolist()) == {
        dqn.compute_single_action(0)[0]}


@pytest.mark.parametrize("source", ["policy", "onnx"])
@pytest.mark.parametrize("case", CASES)
def test_an_empty_batch_gives_empty_actions_and_info(zoo, case, source):
    """[0, *obs_shape] observations: [0, *action_shape] actions and [0, ...] info columns with the
    keys and dtypes of a batch of one, greedy or exploring (a network of an ONNX export cannot
    take an empty batch itself)."""
    if source == "onnx" and not HAVE_ONNX:
        pytest.skip("the onnx extra is not installed")
    policy, paths = zoo[case]
    served = load_policy(paths[source], seed=0)
    one = observations(policy, 1, 5)
    one_actions, _, one_info = served.compute_actions(one)
    for explore in (False, True, None):
        actions, state_outs, info = served.compute_actions(one[:0], explore=explore)
        assert state_outs == []
        assert actions.shape == (0, *one_actions.shape[1:]) and actions.dtype == one_actions.dtype
        assert list(info) == list(one_info)
        for key, column in info.items():
            assert column.shape == (0, *one_info[key].shape[1:]) and column.dtype == one_info[key].dtype, key
    if isinstance(policy.observation_space, gym.spaces.Discrete):  # the torch policy takes these too
        want, _, want_info = policy.compute_actions(one[:0], explore=False)
        assert actions.shape == want.shape and {k: v.shape for k, v in info.items()} == {
            k: np.shape(v) for k, v in want_info.items()}


# --------------------------------------------------------------------------
# multi-agent: picking a policy
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """A two-policy PPO (p0, p1): its algorithm checkpoint, ONNX exports DIR/p0 and DIR/p1, policies."""
    root = tmp_path_factory.mktemp("serve-multi")
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2}).debugging(seed=0)
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=serve_mapping)
            .training(model={"fcnet_hiddens": [8]}).build())
    policies = {pid: algo.get_policy(pid) for pid in ("p0", "p1")}
    for i, policy in enumerate(policies.values()):
        scale_weights(policy, 3.0, 10 + i)
    path = Path(algo.save(root / "algo", format="msgpack").checkpoint.path)
    algo.stop()
    if HAVE_ONNX:
        for pid, policy in policies.items():
            policy.export_model(root / "exports" / pid, onnx=17)
    return path, root / "exports", policies


def test_policy_id_picks_a_policy_of_a_multi_agent_checkpoint(multi):
    path, exports, policies = multi
    for pid in ("p0", "p1"):
        served = load_policy(path, pid)
        assert served.policy_id == pid
        assert_acts_like(policies[pid], served)
    with pytest.raises(PolicyChoiceError, match=r"p0, p1") as info:
        load_policy(path)
    assert info.value.path == str(path) and "policy_id=" in str(info.value)
    with pytest.raises(UnknownPolicyError, match=r"'p9'.*p0, p1"):
        load_policy(path, "p9")
    for pid in ("p0", "p1"):  # one of its policies' folders, served alone, is named by its place
        assert load_policy(path / "policies" / pid).policy_id == pid
    assert load_policy(FIXTURES / "rllib-2.10" / "ma_msgpack" / "policies" / "pol1").policy_id == "pol1"


def test_only_the_chosen_policy_is_read(multi, tmp_path):
    path, _, policies = multi
    copy = Path(shutil.copytree(path, tmp_path / "copy"))
    (copy / "policies" / "p0" / "policy_state.msgpck").write_bytes(b"garbage")
    assert_acts_like(policies["p1"], load_policy(copy, "p1"))
    with pytest.raises(CorruptCheckpointError, match="policy_state.msgpck"):
        load_policy(copy, "p0")


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra is not installed")
def test_policy_id_picks_an_export_of_several(multi):
    _, exports, policies = multi
    served = load_policy(exports, "p1")
    assert served.policy_id == "p1"
    assert_acts_like(policies["p1"], served)
    with pytest.raises(PolicyChoiceError, match="p0, p1"):
        load_policy(exports)
    assert load_policy(exports / "p0" / "model.onnx").source == exports / "p0"


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra is not installed")
def test_an_export_of_one_policy_is_served_under_its_id(multi, pm, tmp_path):
    """model.json records the policy id: `amber export CKPT DIR --policy p1` serves as p1 (a label
    given to load_policy still wins; an export that records none is default_policy)."""
    from click.testing import CliRunner

    from amber.cli import CliState, cli

    path, exports, policies = multi
    out = tmp_path / "p1-export"
    result = CliRunner().invoke(cli, ["export", str(path), str(out), "--policy", "p1", "--onnx", "17"],
                                obj=CliState(plugin_manager=pm))
    assert result.exit_code == 0, result.output
    assert json.loads((out / "model.json").read_text())["policy_id"] == "p1"
    served = load_policy(out)
    assert served.policy_id == "p1"
    assert_acts_like(policies["p1"], served)
    assert load_policy(out / "model.onnx").policy_id == "p1"
    assert load_policy(out, "served-as").policy_id == "served-as"
    policies["p0"].export_model(tmp_path / "p0-export", onnx=17, policy_id="p0")
    assert load_policy(tmp_path / "p0-export").policy_id == "p0"
    assert "policy_id" not in json.loads((exports / "p0" / "model.json").read_text())
    assert load_policy(exports / "p0" / "model.onnx").policy_id == "default_policy"


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def test_a_pickle_checkpoint_is_refused_with_the_way_to_convert_it(zoo, tmp_path):
    policy, _ = zoo["ppo_cartpole"]
    path = Path(policy.export_checkpoint(tmp_path / "pickled", format="pickle"))
    with pytest.raises(PickleCheckpointError) as info:
        load_policy(path)
    assert isinstance(info.value, UnsafeContentError) and info.value.path == str(path)
    assert f"amber convert {path} " in str(info.value) and "--format msgpack" in str(info.value)
    with pytest.raises(PickleCheckpointError):
        load_policy(path, allow_pickle=False)
    for fixture in ("checkpoints/2.1/ppo_pickle", "checkpoints/1.0/policy_pickle"):
        with pytest.raises(PickleCheckpointError, match="amber convert"):
            load_policy(FIXTURES / fixture)
    assert_acts_like(policy, load_policy(path, allow_pickle=True))  # for one's own checkpoint


def test_the_way_to_convert_a_policy_of_a_pickle_algorithm_checkpoint_leaves_it_intact(tmp_path):
    """The advice for ALGO/policies/ID converts the whole algorithm checkpoint beside it: a copy
    written inside ALGO would be a folder its manifest does not list."""
    import re

    from amber.utils.checkpoints import convert_checkpoint

    algo = tmp_path / "algo"
    shutil.copytree(FIXTURES / "checkpoints/2.1/ppo_pickle", algo)
    with pytest.raises(PickleCheckpointError) as info:
        load_policy(algo / "policies" / "default_policy")
    src, dst, served = re.search(r"`amber convert (\S+) (\S+) --format msgpack`, and serve (\S+) ",
                                 str(info.value)).groups()
    assert Path(src) == algo and Path(dst) == tmp_path / "algo-msgpack"
    convert_checkpoint(src, dst, format="msgpack", allow_pickle=True)
    from amber.utils.checkpoints import verify

    assert verify(algo).ok and sorted(p.name for p in tmp_path.iterdir()) == ["algo", "algo-msgpack"]
    restored = Policy.from_checkpoint(algo / "policies" / "default_policy", allow_pickle=True)
    assert_acts_like(restored, load_policy(served))


def test_a_third_party_format_is_served_and_pickle_refused_through_any_plugin_manager(zoo, contract_pm,
                                                                                     tmp_path):
    policy, _ = zoo["sac_pendulum"]
    path = policy.export_checkpoint(tmp_path / "npz", format="npz", pm=contract_pm)
    assert_acts_like(policy, load_policy(path, pm=contract_pm))
    pickled = policy.export_checkpoint(tmp_path / "pickled", format="pickle", pm=contract_pm)
    with pytest.raises(PickleCheckpointError, match="amber convert"):
        load_policy(pickled, pm=contract_pm)


def test_an_rllib_pickle_checkpoint_is_refused():
    with pytest.raises(UnsafeContentError, match="convert_to_msgpack_checkpoint"):
        load_policy(FIXTURES / "rllib-2.10" / "ppo_pickle")


def test_missing_and_corrupt_paths_raise_checkpoint_errors(zoo, tmp_path):
    with pytest.raises(NotACheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACheckpointError):
        load_policy(tmp_path / "empty")
    copy = Path(shutil.copytree(zoo["dqn_cartpole"][1]["algorithm"], tmp_path / "copy"))
    state = copy / "policies" / "default_policy" / "policy_state.msgpck"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="policy_state.msgpck") as info:
        load_policy(copy)
    assert info.value.path == str(state)
    with pytest.raises(CheckpointError, match="not a policy"):
        load_policy(amber.save({"w": np.zeros(3)}, tmp_path / "state", format="msgpack"))


@pytest.mark.skipif(not HAVE_ONNX, reason="the onnx extra is not installed")
def test_a_damaged_or_missing_onnx_model_is_refused(zoo, tmp_path, monkeypatch):
    export = Path(shutil.copytree(zoo["ppo_cartpole"][1]["onnx"], tmp_path / "export"))
    data = bytearray((export / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (export / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="model.onnx: content does not match its digest in model.json"):
        load_policy(export)  # (an export has no checkpoint.json to blame)
    (export / "model.onnx").write_bytes(bytes(data[:-1]))
    with pytest.raises(CorruptCheckpointError, match=r"model.onnx: has \d+ bytes, model.json records"):
        load_policy(export)
    native = tmp_path / "native"
    zoo["ppo_cartpole"][0].export_model(native)  # model.pt2 only
    with pytest.raises(UnservablePolicyError, match="no model.onnx.*onnx=17"):
        load_policy(native)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingPluginError, match=r"amber-rl\[onnx\]"):
        load_policy(zoo["ppo_cartpole"][1]["onnx"])


def test_an_unknown_policy_class_or_misfit_weights_are_named(zoo, tmp_path):
    from amber.checkpoint_write import write_checkpoint

    class NotServed(TorchPolicy):
        pass

    amber.register_class(NotServed, name="tests.serve.NotServed")
    state = zoo["ppo_cartpole"][0].get_state()
    state["policy_spec"]["policy_class"] = NotServed
    path = write_checkpoint(tmp_path / "custom", type="Policy", state=state, format="msgpack")
    with pytest.raises(UnservablePolicyError, match="tests.serve.NotServed"):
        load_policy(path)
    state["policy_spec"]["policy_class"] = TorchPolicy
    state["weights"] = {k: v[..., :1] for k, v in state["weights"].items()}
    path = write_checkpoint(tmp_path / "misfit", type="Policy", state=state, format="msgpack")
    with pytest.raises(InvalidStateError, match="misfit"):
        load_policy(path)


# --------------------------------------------------------------------------
# old amber checkpoints, RLlib's
# --------------------------------------------------------------------------

OLD = [f"checkpoints/{v}/{name}" for v in ("1.0", "2.0", "2.1")
       for name in ("ppo_msgpack", "ppo_multi_msgpack", "dqn_msgpack", "sac_msgpack", "policy_msgpack")]
RLLIB = [f"rllib-2.10/{name}" for name in ("ppo_msgpack", "ma_msgpack", "dqn_msgpack", "sac_msgpack",
                                           "ppo_policy_msgpack")]


@pytest.mark.parametrize("fixture", OLD + RLLIB)
def test_old_and_rllib_checkpoints_are_served_as_the_torch_policy(fixture):
    path = FIXTURES / fixture
    restored = Policy.from_checkpoint(path)
    policies = restored if isinstance(restored, dict) else {None: restored}
    for pid, policy in policies.items():
        served = load_policy(path, pid)
        assert pid is None or served.policy_id == pid
        assert_acts_like(policy, served, seed=5)


# --------------------------------------------------------------------------
# no torch, tensorflow, gymnasium or cloudpickle
# --------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from amber.serve import load_policy

    out = {}
    for path, pid in json.loads(sys.argv[1]):
        policy = load_policy(path, pid)
        space = policy.observation_space
        obs = space["start"] if space["type"] == "Discrete" else np.zeros(space["shape"], np.float32)
        action, _, info = policy.compute_single_action(obs)
        out[path] = [np.asarray(action).tolist(), sorted(info)]
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in set(sys.argv[2].split(",")))
    print(json.dumps({"actions": out, "forbidden": forbidden}))
""")


def test_serving_imports_no_torch_tensorflow_gymnasium_or_cloudpickle(zoo, multi):
    """One fresh process loads and acts with every kind of policy, checkpoint and export."""
    paths = [[str(p), None] for _, sources in zoo.values() for p in sources.values()]
    paths += [[str(multi[0]), "p1"], [str(FIXTURES / "rllib-2.10" / "sac_msgpack"), None],
              [str(FIXTURES / "checkpoints" / "1.0" / "dqn_msgpack"), None],
              # its mapping function's 1.0 import path is looked up among the plugins' names
              [str(FIXTURES / "checkpoints" / "1.0" / "ppo_multi_msgpack"), "p0"]]
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(paths), ",".join(FORBIDDEN)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["forbidden"] == []
    assert len(report["actions"]) == len(paths)
