"""Empty folders inside a checkpoint: they hold no data and no load reads them (and object stores
keep no folders at all), so `verify` passes, a save may replace the checkpoint and trust may sign
it. tf2 checkpoints of earlier ambers saved with ``export_native_model_files`` hold an empty
``model/assets/`` (TensorFlow's SavedModel writes one): they failed `amber verify` for it.
A folder holding anything at all, at any depth, is still reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from amber.checkpoint import write_checkpoint
from amber.cli import CliState, cli
from amber.errors import CheckpointWriteError
from amber.utils.checkpoints import verify


def _save(target: Path, value: float, pm) -> None:
    write_checkpoint(target, type="Algorithm", state={"v": value}, format="msgpack", pm=pm,
                     policies={"p0": {"w": np.full(3, value)}, "p1": {"w": np.full(3, value)}})


@pytest.mark.parametrize("empty", ["policies/p0/model/assets", "policies/p0/model/a/b", "spare"])
def test_an_empty_folder_is_no_problem(pm, tmp_path, empty):
    target = tmp_path / "ckpt"
    _save(target, 1.0, pm)
    (target / empty).mkdir(parents=True)
    report = verify(target)
    assert report.ok, report.problems
    run = CliRunner().invoke(cli, ["verify", str(target)], obj=CliState(plugin_manager=pm))
    assert run.exit_code == 0, run.output
    _save(target, 2.0, pm)  # a save over it replaces it: nothing of the user's is lost
    assert verify(target).ok


@pytest.mark.parametrize("inside", ["file", "link", "link-to-folder"])
def test_a_folder_holding_anything_at_any_depth_is_reported(pm, tmp_path, inside):
    target = tmp_path / "ckpt"
    _save(target, 1.0, pm)
    deep = target / "policies" / "p0" / "model" / "assets" / "deeper"
    deep.mkdir(parents=True)
    if inside == "file":
        (deep / "vocab.txt").write_text("mine")
    elif inside == "link":
        (deep / "vocab.txt").symlink_to(tmp_path / "nowhere")
    else:
        (deep / "more").symlink_to(tmp_path)
    report = verify(target)
    assert not report.ok and any("model" in p for p in report.problems), report.problems
    with pytest.raises(CheckpointWriteError, match="does not list"):
        _save(target, 2.0, pm)
    assert deep.exists()


def test_a_link_in_place_of_an_empty_folder_is_reported(pm, tmp_path):
    target = tmp_path / "ckpt"
    _save(target, 1.0, pm)
    (tmp_path / "empty").mkdir()
    (target / "policies" / "p0" / "assets").symlink_to(tmp_path / "empty")
    assert not verify(target).ok
