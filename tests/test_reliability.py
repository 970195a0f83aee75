"""Faults while saving: full disk, read-only directory, concurrent savers (reliability.md 9, 10)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import amber
from amber import layout
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import CheckpointWriteError

FORMATS = ["pickle", "msgpack"]


def _state(i: int, n: int = 50_000) -> dict:
    return {"i": i, "w": np.full(n, i, dtype=np.float32)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_injected_enospc_fails_cleanly_and_keeps_the_old_checkpoint(bare_pm, tmp_path, monkeypatch, fmt):
    path = amber.save(_state(1), tmp_path / "ck", format=fmt, pm=bare_pm)
    written = []
    real_write = layout.HashingFile.write

    def failing_write(self, b):
        written.append(len(memoryview(b).cast("B")))
        if sum(written) > 10_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, b)

    monkeypatch.setattr(layout.HashingFile, "write", failing_write)
    with pytest.raises(CheckpointWriteError, match="disk is full") as e:
        amber.save(_state(2), path, format=fmt, pm=bare_pm)
    assert str(path) in str(e.value)
    monkeypatch.undo()
    assert amber.load(path, allow_pickle=True, pm=bare_pm)["i"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_real_full_disk(bare_pm, small_tmpfs, fmt):
    path = amber.save(_state(1, 10_000), small_tmpfs / "ck", format=fmt, pm=bare_pm)
    with pytest.raises(CheckpointWriteError, match="disk is full"):
        amber.save(_state(2, 400_000), path, format=fmt, pm=bare_pm)  # 1.6 MB > 1 MiB
    assert amber.load(path, allow_pickle=True, pm=bare_pm)["i"] == 1
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["ck"]


def test_real_read_only_directory(bare_pm, small_tmpfs):
    path = amber.save(_state(1, 1000), small_tmpfs / "ck", pm=bare_pm)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        amber.save(_state(2, 1000), path, pm=bare_pm)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        amber.save(_state(2, 1000), small_tmpfs / "new", pm=bare_pm)
    assert amber.load(path, pm=bare_pm)["i"] == 1


def test_injected_read_only_directory(bare_pm, tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(CheckpointWriteError, match="read-only"):
        amber.save({"a": 1}, tmp_path / "ck", pm=bare_pm)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


RACER = """
import sys, numpy as np
from amber.checkpoint import write_checkpoint
tag, path, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for r in range(rounds):
    w = np.full(100_000, tag * 1000 + r, dtype=np.float64)
    write_checkpoint(path, type="Algorithm", state={"tag": tag, "r": r}, format="msgpack",
                     policies={f"p{tag}": {"w": w, "tag": tag, "r": r}})
"""


def test_two_concurrent_savers_never_interleave(bare_pm, tmp_path):
    path = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tag), str(path), "15"], env=env)
             for tag in (1, 2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    ckpt = read_checkpoint(path, pm=bare_pm)
    tag, r = ckpt.state["tag"], ckpt.state["r"]
    assert list(ckpt.policies) == [f"p{tag}"]
    pol = ckpt.policies[f"p{tag}"].state
    assert (pol["tag"], pol["r"]) == (tag, r) and (pol["w"] == tag * 1000 + r).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_write_checkpoint_reports_path_on_unwritable_parent(bare_pm, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointWriteError) as e:
        write_checkpoint(blocker / "ck", type="State", state={}, format="msgpack", pm=bare_pm)
    assert str(blocker / "ck") in str(e.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_file_and_directory_is_fsynced_before_the_rename(bare_pm, tmp_path, monkeypatch, fmt):
    """Rule 1: the data is durable before the checkpoint becomes visible under its name."""
    from amber import atomic
    from amber.checkpoint import write_checkpoint

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    at_rename: list[set[str]] = []
    real_rename = os.rename

    def recording_rename(src, dst):
        at_rename.append(set(synced))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    monkeypatch.setattr(atomic, "_renameat2", lambda: None)  # plain renames, recorded above
    policies = {f"p{i}": _state(i, 20_000) for i in range(3)}
    target = tmp_path / "ck"
    write_checkpoint(target, type="Algorithm", state=_state(9), policies=policies, format=fmt, pm=bare_pm)
    assert at_rename, "the staging directory was never renamed"
    staged = at_rename[0]
    roots = {m.group(0) for p in staged if (m := re.match(r".*/\.ck\.amber-tmp-\d+-[0-9a-f]{8}", p))}
    assert len(roots) == 1, roots
    stage_root = roots.pop()
    expected = set()
    for d, _, names in os.walk(target):
        rel = os.path.relpath(d, target)
        base = stage_root if rel == "." else os.path.join(stage_root, rel)
        expected.add(base)
        expected.update(os.path.join(base, n) for n in names)
    assert expected <= staged, sorted(expected - staged)
    assert len(expected) >= 3 * 3 + 3  # files of three policies, the top level and the directories


def test_an_export_onto_a_full_disk_is_a_clean_error(small_tmpfs, tmp_path):
    """torch's own writer aborts the whole process on a full disk (a C++ exception in its cleanup);
    `amber export` ends with one error line and leaves nothing behind instead."""
    import gymnasium as gym

    from amber.policy.torch_policy import TorchPolicy

    policy = TorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                         {"model": {"fcnet_hiddens": [512, 512]}, "seed": 0})  # model.pt2 > 1 MiB
    ckpt = policy.export_checkpoint(tmp_path / "policy", format="msgpack")
    done = subprocess.run([sys.executable, "-m", "amber.cli", "export", ckpt, str(small_tmpfs / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("amber: error: exporting into") and "the disk is full" in done.stderr
    assert os.listdir(small_tmpfs) == []
