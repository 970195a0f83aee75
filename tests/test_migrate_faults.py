"""`amber migrate` never writes a checkpoint this amber cannot read back (a plugin's step beyond
its version), and runs each migration step once, as loading does."""

from __future__ import annotations

import pluggy
import pytest
from click.testing import CliRunner

import amber
from amber.checkpoint import CHECKPOINT_VERSION, read_checkpoint, write_checkpoint
from amber.cli import cli
from amber.cli.base import CliState
from amber.errors import UnsupportedVersionError
from amber.migration import CheckpointTrees, Migration
from amber.plugin_manager import get_plugin_manager
from amber.utils.checkpoints import get_checkpoint_info
from tests.treeutil import tree_digest


def _upgraded(trees: CheckpointTrees) -> CheckpointTrees:
    return trees.replace(state={**trees.state, "upgraded": True})


class BeyondThisAmber:
    """A third party's steps from this amber's version on: to a future 2.3 and to a dead end."""

    @amber.hookimpl
    def amber_register_migrations(self) -> list[Migration]:
        return [Migration(CHECKPOINT_VERSION, "2.3", _upgraded, "to a future version"),
                Migration("2.3", "experimental", _upgraded, "to a version nothing reads"),
                Migration("exp-0", CHECKPOINT_VERSION, _upgraded, "an old private version")]


@pytest.fixture
def beyond_pm() -> pluggy.PluginManager:
    pm = get_plugin_manager(autoload=False)
    pm.register(BeyondThisAmber(), name="beyond_this_amber")
    return pm


@pytest.mark.parametrize("to", ["2.3", "experimental"])
def test_migrate_to_a_version_this_amber_cannot_read_is_refused(beyond_pm, tmp_path, to):
    """In place, into DST, dry run or not, Python or CLI: refused, nothing written, the source loads."""
    src = write_checkpoint(tmp_path / "ck", type="State", format="msgpack", state={"k": 1}, pm=beyond_pm)
    before = tree_digest(src)
    for dst, dry_run in ((None, False), (None, True), (tmp_path / "x", False), (tmp_path / "y", True)):
        with pytest.raises(UnsupportedVersionError, match=f"{to!r}.*could not read"):
            amber.migrate(src, dst, to=to, dry_run=dry_run, pm=beyond_pm)
    for args in ([], ["--dry-run"], [str(tmp_path / "z")]):
        r = CliRunner().invoke(cli, ["migrate", str(src), *args, "--to", to],
                               obj=CliState(plugin_manager=beyond_pm))
        assert r.exit_code == 2, r.output
        assert "Traceback" not in r.output and "could not read" in r.stderr
    assert tree_digest(src) == before
    assert not any((tmp_path / name).exists() for name in "xyz")
    assert amber.load(src, pm=beyond_pm) == {"k": 1}
    with pytest.raises(UnsupportedVersionError, match="could not read"):
        read_checkpoint(src, to=to, pm=beyond_pm)


def test_default_target_stops_at_this_amber_version(beyond_pm, tmp_path):
    """With steps beyond it installed, migrating (no ``to``) still lands on this amber's version."""
    src = write_checkpoint(tmp_path / "old", type="State", format="msgpack", state={"k": 1},
                           checkpoint_version="exp-0", pm=beyond_pm)
    result = amber.migrate(src, tmp_path / "new", pm=beyond_pm)
    assert result.to_version == CHECKPOINT_VERSION
    assert [step["name"] for step in result.steps] == [f"exp-0 -> {CHECKPOINT_VERSION}"]
    assert get_checkpoint_info(tmp_path / "new")["checkpoint_version"] == CHECKPOINT_VERSION
    assert amber.load(tmp_path / "new", pm=beyond_pm) == {"k": 1, "upgraded": True}
    assert amber.migrate(tmp_path / "new", pm=beyond_pm).steps == []


class Counted:
    """A step that (against the rule that steps are pure) scales its input in place, counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    @amber.hookimpl
    def amber_register_migrations(self) -> list[Migration]:
        def scale_lr(trees: CheckpointTrees) -> CheckpointTrees:
            self.calls += 1
            trees.state["lr"] *= 10
            return trees

        return [Migration("lr-0", "1.0", scale_lr, "lr was stored divided by 10")]


def test_migrate_runs_each_step_once_as_load_does(tmp_path):
    counted = Counted()
    pm = get_plugin_manager(autoload=False)
    pm.register(counted, name="counted")
    src = write_checkpoint(tmp_path / "a", type="State", format="msgpack", state={"lr": 1},
                           checkpoint_version="lr-0", pm=pm)
    assert amber.load(src, pm=pm) == {"lr": 10} and counted.calls == 1
    counted.calls = 0
    amber.migrate(src, tmp_path / "dry", dry_run=True, pm=pm)
    assert counted.calls == 1
    counted.calls = 0
    result = amber.migrate(src, tmp_path / "b", pm=pm)
    assert counted.calls == 1
    assert [step["name"] for step in result.steps][0] == "lr-0 -> 1.0"
    assert amber.load(tmp_path / "b", pm=pm) == amber.load(src, pm=pm) == {"lr": 10}
