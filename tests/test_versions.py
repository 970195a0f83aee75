"""Checkpoint versions: every frozen fixture of every version loads, acts as it did and trains on;
`amber migrate` upgrades each; new checkpoints hold names, never import paths."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.checkpoint import CHECKPOINT_VERSION, read_checkpoint
from amber.errors import CheckpointError, UnregisteredNameError, UnsupportedVersionError
from amber.policy.policy import Policy
from amber.trust import trust_checkpoint
from amber.utils.checkpoints import get_checkpoint_info, migrate, verify
from tests.fixtures.fixture_fns import policy_for_agent
from tests.treeutil import tree_digest

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"
VERSIONS = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
CASES = [(v, name, kind) for v in VERSIONS
         for name, kind in json.loads((FIXTURES / v / "expected.json").read_text())["fixtures"].items()]


def expected(version: str, name: str) -> dict:
    return json.loads((FIXTURES / version / "expected.json").read_text())["fixtures"][name]


@pytest.fixture(autouse=True)
def _registered_mapping_fn():
    # 1.0 stored the fixtures' mapping function by import path; 2.0 resolves it by name.
    amber.register_class(policy_for_agent)


def check_policy(policy: Policy, want: dict, obs: np.ndarray) -> None:
    actions, _, extra = policy.compute_actions(obs, explore=False)
    np.testing.assert_array_equal(np.asarray(actions), np.asarray(want["actions"]))
    for key, values in want["extra"].items():
        np.testing.assert_allclose(np.asarray(extra[key], np.float64), values, rtol=0, atol=1e-6, err_msg=key)
    assert {k: list(np.shape(v)) for k, v in policy.get_weights().items()} == want["weight_shapes"]


@pytest.mark.parametrize("version,name,kind", CASES, ids=[f"{v}/{n}" for v, n, _ in CASES])
def test_fixture_loads_acts_and_trains_on(version, name, kind, tmp_path):
    path = FIXTURES / version / name
    if "pickle" in name:  # unsigned, like every pickle checkpoint of an older amber: trusted once
        path = Path(shutil.copytree(path, tmp_path / name))
        trust_checkpoint(path)
    before = tree_digest(path)
    want = expected(version, name)
    if want["kind"] == "State":
        state = amber.load(path)
        np.testing.assert_array_equal(state["w"], np.asarray(want["w"], np.float32))
        assert (state["step"], state["name"], state["nested"]) == (want["step"], want["name"], want["nested"])
    elif want["kind"] == "Policy":
        policy = Policy.from_checkpoint(path)
        check_policy(policy, want["policy"], np.asarray(want["observations"], np.float32))
    else:
        obs = np.asarray(want["observations"], np.float32)
        algo = Algorithm.from_checkpoint(path)
        assert type(algo).__name__ == want["algorithm"]
        assert algo.iteration == want["iteration"]
        for key, value in want["counters"].items():
            assert algo.counters[key] == value
        for pid, pwant in want["policies"].items():
            check_policy(algo.get_policy(pid), pwant, obs)
        algo.train()
        assert algo.iteration == want["iteration"] + 1
        fmt = read_checkpoint(path, migrate=False).format
        saved = algo.save(tmp_path / "again", format=fmt).checkpoint.path
        assert get_checkpoint_info(saved)["checkpoint_version"] == CHECKPOINT_VERSION
        again = Algorithm.from_checkpoint(saved)
        for pid, policy in algo.policies.items():
            for k, w in policy.get_weights().items():
                np.testing.assert_array_equal(again.get_policy(pid).get_weights()[k], w)
        again.stop()
        algo.stop()
    assert tree_digest(path) == before, "loading must never rewrite the source"


@pytest.mark.parametrize("version,name,kind", [c for c in CASES if c[0] != CHECKPOINT_VERSION],
                         ids=[f"{v}/{n}" for v, n, _ in CASES if v != CHECKPOINT_VERSION])
def test_amber_migrate_upgrades_each_fixture(version, name, kind, tmp_path):
    src = tmp_path / name
    shutil.copytree(FIXTURES / version / name, src)
    if "pickle" in name:  # unsigned, like every pickle checkpoint of an older amber: trusted once
        trust_checkpoint(src)
    before = tree_digest(src)
    plan = migrate(src, dry_run=True)
    assert tree_digest(src) == before and not plan.written, "--dry-run must not change a byte"
    assert [s["name"] for s in plan.steps] and plan.steps[-1]["name"].endswith(f"-> {CHECKPOINT_VERSION}")
    result = migrate(src)
    assert result.written and verify(src).ok
    assert get_checkpoint_info(src)["checkpoint_version"] == CHECKPOINT_VERSION
    assert read_checkpoint(src, migrate=False).checkpoint_version == CHECKPOINT_VERSION
    want = expected(version, name)
    if want["kind"] == "Algorithm":
        algo = Algorithm.from_checkpoint(src)
        for pid, pwant in want["policies"].items():
            check_policy(algo.get_policy(pid), pwant, np.asarray(want["observations"], np.float32))
        algo.stop()
    elif want["kind"] == "Policy":
        check_policy(Policy.from_checkpoint(src), want["policy"], np.asarray(want["observations"], np.float32))
    else:
        assert amber.load(src)["step"] == want["step"]
    assert migrate(src).steps == [], "a current checkpoint needs no step"


def test_migrate_cli_dry_run_recursive_and_failures(tmp_path):
    from click.testing import CliRunner

    from amber.cli import cli

    run_dir = tmp_path / "run"
    for name in ("ppo_msgpack", "dqn_pickle", "state_msgpack"):
        shutil.copytree(FIXTURES / "1.0" / name, run_dir / name)
    shutil.copytree(FIXTURES / "1.0" / "ppo_pickle", run_dir / "nested" / "broken")
    (run_dir / "nested" / "broken" / "policies" / "default_policy" / "policy_state.pkl").write_bytes(b"junk")
    before = tree_digest(run_dir)
    dry = CliRunner().invoke(cli, ["migrate", str(run_dir), "--recursive", "--dry-run", "--trust"])
    assert tree_digest(run_dir) == before
    assert dry.output.count("dry run") == 3 and "FAILED" in dry.output and "broken" in dry.output
    assert "algorithm_class" in dry.output and "amber.PPO" in dry.output
    broken_before = tree_digest(run_dir / "nested" / "broken")
    done = CliRunner().invoke(cli, ["migrate", str(run_dir), "--recursive", "--trust"])
    assert done.exit_code == 1, done.output
    assert done.output.count("migrated") == 3
    for name in ("ppo_msgpack", "dqn_pickle", "state_msgpack"):
        assert get_checkpoint_info(run_dir / name)["checkpoint_version"] == CHECKPOINT_VERSION
        assert verify(run_dir / name).ok
    assert tree_digest(run_dir / "nested" / "broken") == broken_before, "a failure leaves the source untouched"


def test_migrate_to_dst_and_to_version(tmp_path):
    src = FIXTURES / "1.0" / "ppo_msgpack"
    before = tree_digest(src)
    same = migrate(src, tmp_path / "same", to="1.0")
    assert same.steps == [] and get_checkpoint_info(tmp_path / "same")["checkpoint_version"] == "1.0"
    migrate(src, tmp_path / "new")
    assert get_checkpoint_info(tmp_path / "new")["checkpoint_version"] == CHECKPOINT_VERSION
    assert tree_digest(src) == before
    with pytest.raises(UnsupportedVersionError, match="'0.5'"):
        migrate(src, tmp_path / "x", to="0.5")


@pytest.mark.parametrize(("to", "match"), [
    ("banana", r"unknown target version 'banana'; known: 1\.0, 2\.0, 2\.1"),
    ("99.0", r"unknown target version '99\.0'"),
    ("1.0", r"cannot migrate backwards from 2\.1 to 1\.0 \(migrations only upgrade\)"),
])
def test_migrate_to_an_unknown_or_older_version_says_so(tmp_path, to, match):
    """The target is what is wrong, not the source's version: a clean error (CLI exit 2), nothing written."""
    from click.testing import CliRunner

    from amber.cli import cli

    src = FIXTURES / "2.1" / "ppo_msgpack"
    with pytest.raises(UnsupportedVersionError, match=match):
        migrate(src, tmp_path / "x", to=to)
    r = CliRunner().invoke(cli, ["migrate", str(src), str(tmp_path / "y"), "--to", to])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "upgrade amber" not in r.output and "this amber reads" not in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _new_checkpoints(tmp_path):
    from amber.algorithms.dqn import DQNConfig
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    tiny = {"fcnet_hiddens": [4], "fcnet_activation": "tanh"}
    for fmt in ("pickle", "msgpack"):
        ppo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
               .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=policy_for_agent)
               .training(model=tiny, train_batch_size=64, minibatch_size=32, num_epochs=1).build())
        yield ppo.save(tmp_path / f"ppo_{fmt}", format=fmt).checkpoint.path
        ppo.get_policy("p0").export_checkpoint(tmp_path / f"policy_{fmt}", format=fmt)
        yield tmp_path / f"policy_{fmt}"
        ppo.stop()
        dqn = DQNConfig().environment("CartPole-v1").training(model=tiny).build()
        yield dqn.save(tmp_path / f"dqn_{fmt}", format=fmt).checkpoint.path
        dqn.stop()


def test_new_checkpoints_say_current_version_and_hold_no_import_path(tmp_path):
    paths = list(_new_checkpoints(tmp_path))
    for path in paths:
        assert get_checkpoint_info(path)["checkpoint_version"] == CHECKPOINT_VERSION
        for f in Path(path).rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                for needle in (b"amber.algorithms.", b"amber.policy.", b"amber.envs.", b"tests.fixtures",
                               b"fixture_fns:", b":PPO", b":TorchPolicy", b":MultiAgentCartPole"):
                    assert needle not in data, f"{f} holds the import path fragment {needle!r}"
        assert isinstance(Algorithm.from_checkpoint(path), Algorithm) if "policy_" not in str(path) \
            else isinstance(Policy.from_checkpoint(path), Policy)


def test_unregistered_name_is_a_clear_error(tmp_path):
    from amber.algorithms.ppo import PPOConfig
    from amber.names import _user, _user_by_id, _user_by_path

    def own_mapping(agent_id, episode=None, worker=None, **kw):
        return "p0" if agent_id == 0 else "p1"

    from amber.envs import MultiAgentCartPole

    name = amber.register_class(own_mapping, name="user:own_mapping")
    assert name == "user:own_mapping"
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=own_mapping)
            .training(model={"fcnet_hiddens": [4]}, train_batch_size=64, minibatch_size=32).build())
    path = algo.save(tmp_path / "ck", format="msgpack").checkpoint.path
    algo.stop()
    _user.pop(name), _user_by_id.pop(id(own_mapping)), _user_by_path.clear()  # a fresh process
    with pytest.raises(UnregisteredNameError, match=r"user:own_mapping.*amber\.register_class\(own_mapping\)") as e:
        Algorithm.from_checkpoint(path)
    assert str(path) in str(e.value)
    restored = Algorithm.from_checkpoint(path, policy_mapping_fn=own_mapping)  # or passed again
    assert set(restored.policies) == {"p0", "p1"}


def test_register_class_rules():
    from amber.errors import DuplicateNameError

    def f():
        pass

    def g():
        pass

    assert amber.register_class(f, name="mine:f") == "mine:f"
    assert amber.register_class(f, name="mine:f") == "mine:f"  # again: a no-op
    with pytest.raises(DuplicateNameError, match="mine:f"):
        amber.register_class(g, name="mine:f")
    for bad in ("amber.PPO", "amber.mine", "gymnasium:X", "?x", "", "a b", "a\u202eb"):
        with pytest.raises(ValueError):
            amber.register_class(g, name=bad)
    with pytest.raises(ValueError, match="lambda"):
        amber.register_class(lambda: 0)


def test_lambda_mapping_fn_in_msgpack_is_asked_for(tmp_path):
    """The seed's own pattern: a lambda mapping function, saved in pickle, converted to msgpack."""
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole
    from amber.utils.checkpoints import convert_to_msgpack_checkpoint

    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"pol1", "pol2"},
                         policy_mapping_fn=lambda agent_id, episode, worker, **kw: "pol1" if agent_id == 0 else "pol2")
            .training(model={"fcnet_hiddens": [4]}, train_batch_size=64, minibatch_size=32).build())
    algo.train()
    pickle_dir = algo.save(tmp_path / "pickle").checkpoint.path
    convert_to_msgpack_checkpoint(pickle_dir, tmp_path / "msgpack")
    with pytest.raises(CheckpointError, match="policy_mapping_fn"):
        Algorithm.from_checkpoint(tmp_path / "msgpack")
    clone = Algorithm.from_checkpoint(tmp_path / "msgpack", policy_mapping_fn=lambda a, e, w, **k: "pol1")
    for pid in ("pol1", "pol2"):
        for k, w in algo.get_policy(pid).get_weights().items():
            np.testing.assert_array_equal(clone.get_policy(pid).get_weights()[k], w)
    clone.train()


def _relabel(path: Path, version: str, *, digest: bool = True) -> None:
    from amber.layout import MANIFEST, SELF_DIGEST, _self_digest

    m = path / MANIFEST
    raw = json.loads(m.read_text())
    raw.pop(SELF_DIGEST)
    raw["checkpoint_version"] = version
    raw["amber_version"] = "9.9.9" if version == "3.0" else raw["amber_version"]
    raw[SELF_DIGEST] = _self_digest(raw) if digest else "sha3:not-a-scheme-this-amber-knows"
    m.write_text(json.dumps(raw))


@pytest.mark.parametrize("digest", [True, False], ids=["same-digests", "new-digest-scheme"])
def test_future_version_is_named_before_any_digest(tmp_path, digest):
    path = amber.save({"x": 1}, tmp_path / "ck")
    _relabel(path, "3.0", digest=digest)
    for load in (amber.load, Policy.from_checkpoint, Algorithm.from_checkpoint, get_checkpoint_info,
                 lambda p: migrate(p, dry_run=True)):
        with pytest.raises(UnsupportedVersionError, match=r"'3\.0'.*amber 9\.9\.9.*upgrade amber"):
            load(path)


def test_unknown_old_version_lists_what_is_read(tmp_path):
    path = amber.save({"x": 1}, tmp_path / "ck")
    _relabel(path, "0.3")
    with pytest.raises(UnsupportedVersionError, match=r"'0\.3'.*'1\.0'.*'2\.0'"):
        amber.load(path)
    assert os.path.exists(path)


def test_a_format_plugin_ships_its_own_step(contract_pm, tmp_path):
    """The third-party npz format migrates its own legacy checkpoints into amber's chain."""
    path = amber.save({"npz_state": {"w": np.arange(3.0), "step": 4}}, tmp_path / "old", format="npz",
                      pm=contract_pm)
    _relabel(path, "npz-0")
    ckpt = read_checkpoint(path, pm=contract_pm)
    assert ckpt.migrations_applied[:2] == ["npz-0 -> 1.0", "1.0 -> 2.0"]
    assert ckpt.state["step"] == 4 and ckpt.checkpoint_version == CHECKPOINT_VERSION
    plan = migrate(path, dry_run=True, pm=contract_pm)
    assert "npz_state" in plan.steps[0]["description"]
    migrate(path, pm=contract_pm)
    assert read_checkpoint(path, migrate=False, pm=contract_pm).state["step"] == 4
    with pytest.raises(UnsupportedVersionError):  # without the plugin, nothing leads from npz-0
        _relabel(path, "npz-0")
        amber.load(path)


class _NamedPolicyPlugin:
    """A package's plugin that names its own policy class (the entry-point way)."""

    @amber.hookimpl
    def amber_register_names(self):
        from amber.policy.torch_policy import TorchPolicy

        class PackagedPolicy(TorchPolicy):
            pass

        _NamedPolicyPlugin.cls = PackagedPolicy
        return {"mypkg.PackagedPolicy": PackagedPolicy}


def test_a_plugin_registers_names(tmp_path):
    import gymnasium as gym

    from amber.plugin_manager import get_plugin_manager
    from amber.registry import get_registry

    pm = get_plugin_manager(autoload=False)
    pm.register(_NamedPolicyPlugin())
    cls = get_registry(pm).class_names["mypkg.PackagedPolicy"]
    policy = cls(gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2), {"model": {"fcnet_hiddens": [4]}, "seed": 0})
    path = policy.export_checkpoint(tmp_path / "p", format="msgpack", pm=pm)
    assert read_checkpoint(path, pm=pm).state["policy_spec"]["policy_class"].target == "mypkg.PackagedPolicy"
    restored = Policy.from_checkpoint(path, pm=pm)
    assert type(restored) is cls
    with pytest.raises(UnregisteredNameError, match="mypkg.PackagedPolicy"):
        Policy.from_checkpoint(path)  # a process without that package's plugin
