"""num_env_runners is checked; without ray, more than 0 is refused with the extra to install (never
silently ignored), and a checkpoint of remote runners loads with 0 and a warning; a checkpoint that
declares runners without their state (RLlib's, trained with remote workers) is read with 0 and a warning.
The runners themselves, on a real Ray: tests/test_ray_runners.py."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import InvalidStateError


def _config(**runners):
    return (PPOConfig().environment("CartPole-v1").env_runners(**runners)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]}))


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_num_env_runners_must_be_a_count(bad):
    config = _config()
    config.num_env_runners = bad
    with pytest.raises(ValueError, match="num_env_runners"):
        config.build()
    with pytest.raises(ValueError, match="num_env_runners"):  # through the method too: not rounded
        _config(num_env_runners=bad).build()


@pytest.mark.parametrize(("runners", "message"), [
    ({"num_envs_per_env_runner": 1.5}, "num_envs_per_env_runner must be a positive integer, got 1.5"),
    ({"num_envs_per_env_runner": 0}, "num_envs_per_env_runner must be a positive integer, got 0"),
    ({"num_cpus_per_env_runner": -0.5}, "num_cpus_per_env_runner must be a non-negative number, got -0.5"),
    ({"num_cpus_per_env_runner": "x"}, "num_cpus_per_env_runner must be a non-negative number, got 'x'"),
])
def test_runner_settings_out_of_range_are_named(runners, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _config(**runners)


def test_zero_env_runners_sample_in_process():
    algo = _config(num_env_runners=0, num_envs_per_env_runner=2).build()
    assert algo.train()["num_env_steps_sampled_lifetime"] >= 64
    algo.stop()


def test_a_checkpoint_declaring_runners_without_their_state_loads_with_zero(tmp_path):
    algo = _config().build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    ckpt = read_checkpoint(tmp_path / "src", migrate=False)
    ckpt.state["config"]["num_env_runners"] = 4  # as an RLlib run with four workers would say
    write_checkpoint(tmp_path / "ck", type="Algorithm", state=ckpt.state,
                     policies={pid: p.state for pid, p in ckpt.policies.items()}, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    with pytest.warns(UserWarning, match="num_env_runners"):
        restored = Algorithm.from_checkpoint(tmp_path / "ck")
    assert restored.config.num_env_runners == 0
    restored.train()
    restored.stop()


def _fake_remote_checkpoint(src, dst, runners):
    """A checkpoint as amber saves it with ``runners`` remote env runners (no Ray needed here)."""
    ckpt = read_checkpoint(src, migrate=False)
    ckpt.state["config"]["num_env_runners"] = runners
    local = ckpt.state["components"]["env_runner"]
    ckpt.state["components"]["env_runner"] = {"remote_runners": [{"env_runner": local, "generators": {}}] * runners}
    write_checkpoint(dst, type="Algorithm", state=ckpt.state,
                     policies={pid: p.state for pid, p in ckpt.policies.items()}, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)


WITHOUT_RAY = textwrap.dedent("""
    import sys, warnings
    sys.modules["ray"] = None  # as if ray were not installed
    from amber.algorithms.algorithm import Algorithm
    from amber.algorithms.ppo import PPOConfig
    config = (PPOConfig().environment("CartPole-v1").training(train_batch_size=64, minibatch_size=32,
              num_epochs=1, model={"fcnet_hiddens": [8]}).reporting(log_results=False))
    try:
        config.copy().env_runners(num_env_runners=2).build()
    except ValueError as e:
        assert "amber-rl[ray]" in str(e), e
    else:
        raise AssertionError("num_env_runners=2 built without ray")
    algo = config.copy().env_runners(num_envs_per_env_runner=2).build()
    algo.train()
    algo.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        restored = Algorithm.from_checkpoint(sys.argv[1])
    assert any("amber-rl[ray]" in str(w.message) for w in caught), [str(w.message) for w in caught]
    runner_warnings = [str(w.message) for w in caught if "num_env_runners" in str(w.message)]
    assert runner_warnings and all(sys.argv[1] in m for m in runner_warnings), runner_warnings
    assert restored.config.num_env_runners == 0
    restored.train()
    restored.stop()
    from amber.tune import trainable
    try:
        trainable("PPO")
    except ValueError as e:
        assert "amber-rl[ray]" in str(e), e
    else:
        raise AssertionError("trainable without ray")
    print("ok")
""")


def test_without_ray_remote_runners_name_the_extra_and_their_checkpoints_load_in_process(tmp_path):
    """In a process where ray cannot be imported: num_env_runners=2 says what to install, training
    with 0 works, and a checkpoint of 2 remote runners loads with 0 (and says why)."""
    algo = _config().build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    _fake_remote_checkpoint(tmp_path / "src", tmp_path / "ck", 2)
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(tmp_path / "ck")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_a_restore_into_another_number_of_runners_names_the_checkpoint(tmp_path):
    """Restoring the state of 2 remote runners into an algorithm sampling in process warns that the
    episodes restart, and names the checkpoint; the algorithm then trains."""
    algo = _config().build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    _fake_remote_checkpoint(tmp_path / "src", tmp_path / "ck", 2)
    local = _config(num_envs_per_env_runner=2).build()
    try:
        with pytest.warns(UserWarning, match="num_env_runners=2") as caught:
            local.restore(tmp_path / "ck")
        runner_warnings = [str(w.message) for w in caught if "num_env_runners=2" in str(w.message)]
        assert all(str(tmp_path / "ck") in m for m in runner_warnings), runner_warnings
        assert local.train()["num_env_steps_sampled_lifetime"] == 64
    finally:
        local.stop()


def test_importing_amber_imports_no_ray():
    code = ("import sys, amber, amber.algorithms.ppo, amber.tune, amber.envs.ray_runners; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_checkpoint_whose_runner_count_disagrees_with_its_state_is_refused(tmp_path):
    algo = _config().build()
    algo.save(tmp_path / "src", format="msgpack")
    algo.stop()
    _fake_remote_checkpoint(tmp_path / "src", tmp_path / "ck", 2)
    ckpt = read_checkpoint(tmp_path / "ck", migrate=False)
    ckpt.state["config"]["num_env_runners"] = 3
    write_checkpoint(tmp_path / "bad", type="Algorithm", state=ckpt.state,
                     policies={pid: p.state for pid, p in ckpt.policies.items()}, format="msgpack",
                     metadata=ckpt.metadata, checkpoint_version=ckpt.checkpoint_version)
    with pytest.raises(InvalidStateError, match="num_env_runners is 3"):
        Algorithm.from_checkpoint(tmp_path / "bad")
