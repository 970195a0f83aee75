"""Another system's checkpoint (RLlib 2.10's) through the metadata tools: ``get_checkpoint_info``,
``amber inspect``, ``verify``, ``amber convert`` and ``amber export``.

The loaders read these directories through ``amber_read_foreign_checkpoint``; the metadata tools
describe them through ``amber_describe_foreign_checkpoint``, from the other system's manifests alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import amber
from amber.algorithms.algorithm import Algorithm
from amber.checkpoint_read import describe_foreign
from amber.cli import cli
from amber.cli.base import CliState
from amber.errors import CheckpointError, NotACheckpointError, UnsafeContentError
from amber.plugin_manager import get_plugin_manager
from amber.policy.policy import Policy
from amber.utils.checkpoints import get_checkpoint_info, verify

FIXTURES = Path(__file__).parent / "fixtures" / "rllib-2.10"
PPO, POLICY, PICKLE = FIXTURES / "ppo_msgpack", FIXTURES / "ppo_policy_msgpack", FIXTURES / "ppo_pickle"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), obj=CliState(plugin_manager=get_plugin_manager()))


def _no_state_read(monkeypatch):
    """Make any read of an RLlib state file fail: describing must not need one."""
    from amber.plugins.rllib_compat import reader

    def refuse(path, *a, **k):
        raise AssertionError(f"state file read: {path}")

    monkeypatch.setattr(reader, "decode_msgpack", refuse)


def test_info_of_an_rllib_algorithm_comes_from_its_manifests_alone(monkeypatch):
    _no_state_read(monkeypatch)
    info = get_checkpoint_info(PPO)
    assert (info["type"], info["checkpoint_version"], info["format"]) == ("Algorithm", "rllib-1.1", "msgpack")
    assert info["system"] == "RLlib (Ray 2.10.0)" and info["amber_version"] is None
    assert info["policy_ids"] == ["default_policy"]
    assert info["state_file"] == str(PPO / "algorithm_state.msgpck")
    assert info["files"] == {
        rel: {"size": os.path.getsize(PPO / rel), "digest": None}
        for rel in ("rllib_checkpoint.json", "algorithm_state.msgpck")
    }
    own = info["policies"]["default_policy"]["files"]
    assert set(own) == {"rllib_checkpoint.json", "policy_state.msgpck"}
    assert own["policy_state.msgpck"]["size"] == os.path.getsize(PPO / "policies/default_policy/policy_state.msgpck")


def test_info_of_an_rllib_policy_and_of_a_pickle_one_without_unpickling(monkeypatch):
    _no_state_read(monkeypatch)
    policy = get_checkpoint_info(POLICY)
    assert (policy["type"], policy["policy_ids"], "policies" in policy) == ("Policy", [], False)
    assert set(policy["files"]) == {"rllib_checkpoint.json", "policy_state.msgpck"}
    pickled = get_checkpoint_info(PICKLE)  # described; reading it is still refused
    assert (pickled["format"], pickled["state_file"]) == ("cloudpickle", str(PICKLE / "algorithm_state.pkl"))
    with pytest.raises(UnsafeContentError):
        Algorithm.from_checkpoint(PICKLE)


def test_inspect_shows_who_wrote_it_and_its_files():
    result = invoke("inspect", str(PPO))
    assert result.exit_code == 0, result.output
    assert "checkpoint_version: rllib-1.1" in result.output
    assert "written by: RLlib (Ray 2.10.0)" in result.output
    assert "policy_state.msgpck" in result.output
    as_json = invoke("inspect", str(PPO), "--json")
    assert json.loads(as_json.output)["policy_ids"] == ["default_policy"]


def test_verify_says_there_is_nothing_to_verify_and_how_to_get_digests():
    with pytest.raises(NotACheckpointError, match="records no sizes or digests") as e:
        verify(PPO)
    assert "amber migrate" in str(e.value) and str(PPO) in str(e.value)
    result = invoke("verify", str(PPO))
    assert result.exit_code == 2 and "records no sizes or digests" in result.output


def test_convert_and_export_take_an_rllib_checkpoint(tmp_path):
    result = invoke("convert", str(PPO), str(tmp_path / "amber"), "--format", "msgpack")
    assert result.exit_code == 0, result.output
    assert verify(tmp_path / "amber").ok
    assert get_checkpoint_info(tmp_path / "amber")["checkpoint_version"] == amber.migration.CHECKPOINT_VERSION
    weights = Policy.from_checkpoint(PPO)["default_policy"].get_weights()
    converted = Policy.from_checkpoint(tmp_path / "amber")["default_policy"].get_weights()
    assert all((weights[k] == converted[k]).all() for k in weights)
    result = invoke("export", str(PPO), str(tmp_path / "model"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "model.pt2").is_file()


def test_a_system_no_plugin_knows_is_named_as_such(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "other_checkpoint.json").write_text("{}")
    for call in (get_checkpoint_info, Algorithm.from_checkpoint):
        with pytest.raises(NotACheckpointError, match="which no installed plugin reads"):
            call(other)
    # a tool that works on amber checkpoints alone does not claim that no plugin reads RLlib's
    result = invoke("trust", str(PPO), "--yes")
    assert result.exit_code == 2 and "another system's Algorithm checkpoint (RLlib" in result.output
    assert "amber migrate" in result.output and "no installed plugin reads" not in result.output
    result = invoke("trust", str(other), "--yes")
    assert result.exit_code == 2 and "other_checkpoint.json: another system's checkpoint)" in result.output


class _Garbled:
    @amber.hookimpl
    def amber_describe_foreign_checkpoint(self, path):
        return {"system": "x", "type": "Algorithm", "checkpoint_version": "x-1", "format": "x",
                "state_file": "s", "policy_ids": "not a list", "files": {}}


def test_a_plugins_malformed_description_is_a_checkpoint_error(tmp_path):
    pm = get_plugin_manager(autoload=False)
    pm.register(_Garbled(), name="garbled")
    target = tmp_path / "x"
    shutil.copytree(POLICY, target)
    (target / "rllib_checkpoint.json").unlink()  # only the garbled plugin claims it now
    with pytest.raises(CheckpointError, match="'policy_ids' must be a list"):
        describe_foreign(target, pm)


def test_migrate_dry_run_lists_the_many_settings_it_drops_on_one_line_each_map(tmp_path):
    result = invoke("migrate", str(PPO), str(tmp_path / "x"), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    dropped = [line for line in lines if line.strip().startswith("state: config: removed ")]
    assert len(dropped) == 1 and "num_workers" in dropped[0] and "sgd_minibatch_size" in dropped[0]
    assert not any(line.strip().startswith("state: config.num_workers") for line in lines)
    assert len(lines) < 150 and not (tmp_path / "x").exists()


def test_a_few_removed_keys_keep_a_line_each():
    from amber.migration import changes

    assert sorted(changes({"a": 1, "b": 2, "c": 3}, {"c": 3})) == ["a: removed", "b: removed"]
    many = changes({"m": {"k1": 1, "k2": 2, "k3": 3, "k4": 4, "kept": 5}}, {"m": {"kept": 5, "new": 6}})
    assert sorted(many) == ["m.new: added 6", "m: removed 4 keys: k1, k2, k3, k4"]
