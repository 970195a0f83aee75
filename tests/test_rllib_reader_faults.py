"""What reading and migrating an RLlib checkpoint refuses: a ``policies/`` directory that is a
link, a destination inside the source (or holding it), and a dry run that would succeed where the
real run fails; and what ``amber verify`` tells of an RLlib pickle checkpoint."""

from __future__ import annotations

import hashlib
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
from amber.errors import (
    CheckpointError,
    CheckpointWriteError,
    CorruptCheckpointError,
    MigrationError,
    NotACheckpointError,
)
from amber.plugin_manager import get_plugin_manager
from amber.policy.policy import Policy
from amber.utils.checkpoints import (
    convert_checkpoint,
    get_checkpoint_info,
    migrate,
    migrate_all,
    migrate_checkpoint,
    verify,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rllib-2.10"
PPO, PICKLE = FIXTURES / "ppo_msgpack", FIXTURES / "ppo_pickle"


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- a linked policies/ directory ------------------------------------------------------------------


@pytest.mark.parametrize("listed", [True, False], ids=["ids-in-manifest", "ids-from-directories"])
def test_a_policies_directory_that_is_a_link_is_refused(tmp_path, listed):
    elsewhere = _copy(PPO / "policies", tmp_path / "elsewhere")
    ck = _copy(PPO, tmp_path / "ck")
    shutil.rmtree(ck / "policies")
    os.symlink(elsewhere, ck / "policies")
    if not listed:  # RLlib 1.0 manifests list no policy ids: the directories are looked at
        raw = json.loads((ck / "rllib_checkpoint.json").read_text())
        del raw["policy_ids"]
        (ck / "rllib_checkpoint.json").write_text(json.dumps(raw))
    for read in (Algorithm.from_checkpoint, Policy.from_checkpoint, get_checkpoint_info):
        with pytest.raises(CorruptCheckpointError, match="policies is a symbolic link") as e:
            read(ck)
        assert str(e.value.path) == str(ck / "policies")


# -- migrate: the dry run fails where the real run does ----------------------------------------------


def test_dry_run_in_place_of_an_rllib_checkpoint_fails_as_the_real_run(tmp_path):
    run = tmp_path / "run"
    src = _copy(PPO, run / "rl")
    errors = []
    for dry_run in (True, False):
        with pytest.raises(MigrationError, match="never replaced in place") as e:
            migrate(src, dry_run=dry_run)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    dry, real = migrate_all(run, dry_run=True), migrate_all(run)
    assert [r.error for r in dry] == [r.error for r in real] and "never replaced in place" in dry[0].error
    for args, code in ((["migrate", str(src)], 2), (["migrate", "--recursive", str(run)], 1)):
        assert CliRunner().invoke(cli, [*args, "--dry-run"]).exit_code == code
        assert CliRunner().invoke(cli, args).exit_code == code
    assert _digest(src) == _digest(PPO)


def test_dry_run_into_a_destination_the_write_refuses_fails_alike(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    amber_ck = tmp_path / "amber_ck"
    migrate_checkpoint(PPO, amber_ck)
    for dst in (busy, amber_ck / "nested"):
        for dry_run in (True, False):
            with pytest.raises(CheckpointWriteError):
                migrate(PPO, dst, dry_run=dry_run)
    assert (busy / "notes.txt").read_text() == "mine" and not (amber_ck / "nested").exists()


# -- migrate: the source is never written to -------------------------------------------------------


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.parametrize("kind", ["rllib", "amber"])
def test_a_destination_inside_the_source_is_refused(tmp_path, kind, dry_run):
    src = _copy(PPO, tmp_path / "src")
    if kind == "amber":
        src = tmp_path / "amber_src"
        migrate_checkpoint(PPO, src)
    before = _digest(src)
    # an amber source is refused by the check of every write into a checkpoint (its own words)
    words = "never written to" if kind == "rllib" else "whose checkpoint.json would not list it"
    with pytest.raises(CheckpointWriteError, match=f"inside the (source )?checkpoint.*{words}") as e:
        migrate(src, src / "migrated", dry_run=dry_run)
    assert str(src) in str(e.value)
    assert _digest(src) == before and not (src / "migrated").exists()
    result = CliRunner().invoke(cli, ["migrate", str(src), str(src / "sub" / "migrated")])
    assert result.exit_code == 2 and words in result.output
    assert _digest(src) == before


def test_convert_writes_no_destination_inside_an_rllib_source(tmp_path):
    src = _copy(PPO, tmp_path / "src")
    with pytest.raises(CheckpointWriteError, match="inside the source checkpoint"):
        convert_checkpoint(src, src / "converted", format="msgpack")
    result = CliRunner().invoke(cli, ["convert", str(src), str(src / "sub"), "--format", "msgpack"])
    assert result.exit_code == 2 and "never written to" in result.output
    assert _digest(src) == _digest(PPO)


def test_a_destination_holding_the_source_is_refused(tmp_path):
    """Migrating an algorithm's policy onto the algorithm would replace (remove) the source."""
    algo = tmp_path / "algo"
    migrate_checkpoint(PPO, algo)
    before = _digest(algo)
    for dry_run in (True, False):
        with pytest.raises(CheckpointWriteError, match="holds the source checkpoint"):
            migrate(algo / "policies" / "default_policy", algo, dry_run=dry_run)
    assert _digest(algo) == before


# -- verify of a pickle checkpoint -------------------------------------------------------------------


def test_verify_of_an_rllib_pickle_checkpoint_says_to_convert_it_with_ray(tmp_path):
    with pytest.raises(NotACheckpointError) as e:
        verify(PICKLE)
    message = str(e.value)
    assert "nothing to verify" in message and "convert_to_msgpack_checkpoint(SRC, DST)" in message
    assert "amber migrate" not in message
    with pytest.raises(CheckpointError, match="convert_to_msgpack_checkpoint"):
        migrate(PICKLE, tmp_path / "never")  # what migrate says too
    with pytest.raises(NotACheckpointError, match="`amber migrate .* DST` writes an amber checkpoint"):
        verify(PPO)  # a msgpack one: migrate reads it
    result = CliRunner().invoke(cli, ["verify", str(PICKLE)])
    assert result.exit_code != 0 and "convert_to_msgpack_checkpoint" in result.output


class _Unreadable:
    @amber.hookimpl
    def amber_describe_foreign_checkpoint(self, path):
        return {"system": "x", "type": "Algorithm", "checkpoint_version": "x-1", "format": "x",
                "state_file": "s", "policy_ids": [], "files": {}, "unreadable": 5}


def test_a_description_whose_unreadable_is_not_a_str_is_a_checkpoint_error(tmp_path):
    pm = get_plugin_manager(autoload=False)
    pm.register(_Unreadable(), name="unreadable")
    target = tmp_path / "x"
    target.mkdir()
    with pytest.raises(CheckpointError, match="'unreadable'"):
        describe_foreign(target, pm)
