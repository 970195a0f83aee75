"""Saves, rewrites and reads of one checkpoint by several processes (or threads) at once.

Each test stands for a fault found with processes running concurrently; the
other process is simulated at the instant that matters (a save committing
between a rewrite's fsync and its rename, a writer in another PID namespace).
"""

from __future__ import annotations

import concurrent.futures.thread
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import amber
import amber.atomic
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import ChangedWhileReadError, CheckpointWriteError
from amber.layout import FileEntry, read_manifest
from amber.verified_io import check_file, read_verified

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints"


def _identity_lines(**changed: str) -> str:
    """A marker's identity lines, as this process writes them, with ``changed`` fields replaced."""
    from amber.stale import marker_text

    lines = marker_text().decode().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        key = line.split("=", 1)[0]
        out.append(f"{key}={changed[key]}" if key in changed else line)
    return "\n".join(out) + "\n"


def _forge_staging(parent: Path, marker: str, pid: int = 999999999) -> tuple[Path, Path]:
    tmp = parent / f".run_a.amber-tmp-{pid}-0123abcd"
    (tmp / "policies").mkdir(parents=True)
    (tmp / "policies" / "w.bin").write_bytes(b"x" * 100)
    mark = parent / (tmp.name + ".marker")
    mark.write_text(marker)
    return tmp, mark


# -- 1. stale staging directories -------------------------------------------------------------


def test_staging_of_a_writer_in_another_pid_namespace_is_kept(tmp_path):
    """A writer in another container shares the volume: its pid means nothing here, so a save
    beside it must not delete its staging directory (it did: 'pid not running here')."""
    tmp, mark = _forge_staging(tmp_path, _identity_lines(pidns="4026530000", pid="999999999"))
    amber.save({"x": np.zeros(3)}, tmp_path / "run_b", format="msgpack")
    assert (tmp / "policies" / "w.bin").exists() and mark.exists()
    old = time.time() - 8 * 24 * 3600  # abandoned long ago: then it goes
    os.utime(mark, (old, old))
    amber.save({"x": np.zeros(3)}, tmp_path / "run_b", format="msgpack")
    assert not tmp.exists() and not mark.exists()
    assert sorted(os.listdir(tmp_path)) == ["run_b"]


def test_staging_of_another_host_is_kept(tmp_path):
    tmp, mark = _forge_staging(tmp_path, _identity_lines(host="another-nfs-client", pid="999999999"))
    amber.atomic.remove_stale(tmp_path)
    assert tmp.exists() and mark.exists()


def test_stale_staging_is_renamed_away_before_it_is_deleted(tmp_path, monkeypatch):
    """A dead writer of this namespace: its directory goes, but is never emptied under its own name,
    which its writer (alive after all) could rename into place meanwhile."""
    tmp, mark = _forge_staging(tmp_path, _identity_lines(pid="999999999"))
    calls: list[tuple[str, bool]] = []
    real = shutil.rmtree

    def recording(path, *args, **kwargs):
        calls.append((os.fspath(path), tmp.exists()))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", recording)
    amber.atomic.remove_stale(tmp_path)
    assert not tmp.exists() and not mark.exists() and os.listdir(tmp_path) == []
    assert calls and all(path != os.fspath(tmp) and not existed for path, existed in calls)
    assert ".amber-del-" in calls[0][0]


# -- 2. saves while the interpreter shuts down -------------------------------------------------


def test_save_from_an_atexit_handler(tmp_path):
    script = textwrap.dedent(f"""
        import atexit, numpy as np, amber, amber.checkpoint
        def save_on_exit():
            print("saved", amber.save({{"w": np.ones(1000)}}, {str(tmp_path / "ck")!r}))
            h = amber.save({{"w": np.zeros(1000)}}, {str(tmp_path / "ck2")!r}, block=False)
            print("background", h.result())
        atexit.register(save_on_exit)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert "saved" in out.stdout and "background" in out.stdout, out.stderr[-2000:]
    assert amber.load(tmp_path / "ck")["w"].sum() == 1000
    assert amber.load(tmp_path / "ck2")["w"].sum() == 0


def test_fsyncs_and_snapshots_need_no_new_thread_at_shutdown(tmp_path, monkeypatch):
    """Once the interpreter shuts down, thread pools refuse work: it is done in the calling thread."""
    from amber.durable import fsync_tree
    from amber.snapshots import snapshot

    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(b"x")
    monkeypatch.setattr(concurrent.futures.thread, "_shutdown", True)
    fsync_tree(tmp_path, files=True)
    big = {"a": np.arange(3 << 20, dtype=np.float64), "b": np.ones(2 << 20)}  # over the parallel size
    copied = snapshot(big, fresh_arrays=True)
    assert np.array_equal(copied["a"], big["a"]) and np.array_equal(copied["b"], big["b"])


# -- 3. rewrites in place never undo a save committed meanwhile -------------------------------


def _save_meanwhile(monkeypatch, path: Path, fmt: str) -> None:
    """Another process's save of tag 2 commits at ``path`` right after the rewrite's fsyncs."""
    real = amber.atomic.fsync_tree
    done = []

    def fsync_then_save(root, *, files=False):
        real(root, files=files)
        if not done and f".{path.name}.amber-tmp-" in os.fspath(root):
            done.append(True)
            write_checkpoint(path, type="Algorithm", state={"tag": 2},
                             policies={"p0": {"w": np.full(10, 2)}}, format=fmt)

    monkeypatch.setattr(amber.atomic, "fsync_tree", fsync_then_save)


def _tag(path: Path) -> int:
    return read_checkpoint(path, allow_pickle=True).state["tag"]


def test_trust_keeps_a_save_committed_while_it_signed(tmp_path, monkeypatch):
    from amber.trust import trust_checkpoint

    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.ones(10)}}, format="pickle")
    monkeypatch.setenv("AMBER_KEY_FILE", str(tmp_path / "another_key"))  # signed anew with another key
    _save_meanwhile(monkeypatch, p, "pickle")
    with pytest.raises(CheckpointWriteError, match="changed meanwhile"):
        trust_checkpoint(p)
    assert _tag(p) == 2


def test_convert_in_place_keeps_a_save_committed_meanwhile(tmp_path, monkeypatch):
    from amber.utils.checkpoints import convert_checkpoint

    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.ones(10)}}, format="msgpack")
    _save_meanwhile(monkeypatch, p, "msgpack")
    with pytest.raises(CheckpointWriteError, match="changed meanwhile.*run again"):
        convert_checkpoint(p, p, format="pickle")
    assert _tag(p) == 2 and read_manifest(p).format == "msgpack"
    convert_checkpoint(p, p, format="pickle")  # run again: it converts the newer one
    assert _tag(p) == 2 and read_manifest(p).format == "pickle"


def test_migrate_in_place_keeps_a_save_committed_meanwhile(tmp_path, monkeypatch):
    from amber.utils.checkpoints import migrate

    p = tmp_path / "ck"
    shutil.copytree(FIXTURES / "1.0" / "state_msgpack", p)
    _save_meanwhile(monkeypatch, p, "msgpack")
    with pytest.raises(CheckpointWriteError, match="changed meanwhile"):
        migrate(p)
    assert _tag(p) == 2


# -- 4. and 5. reads of a checkpoint being replaced --------------------------------------------


class _SidecarReplaced:
    """A state source whose sidecar a save replaced after the main file was read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def has(self, suffix: str = "") -> bool:
        return True

    def read(self, suffix: str = "") -> memoryview:
        raise ChangedWhileReadError(f"the checkpoint changed while it was read ({self.path})")


def test_msgpack_lets_changed_while_read_through(tmp_path):
    from amber.plugins.msgpack_fmt.codec import decode_document

    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.zeros(100000)}},
                     format="msgpack")
    main = p / "policies" / "p0" / "policy_state.msgpck"
    assert main.with_suffix(".safetensors").exists()
    with pytest.raises(ChangedWhileReadError):
        decode_document(memoryview(main.read_bytes()), _SidecarReplaced(main))


def _swap_format(p: Path) -> None:
    """Another save replaces ``p`` in the other format: none of its state files keep their names."""
    fmt = "pickle" if read_manifest(p).format == "msgpack" else "msgpack"
    write_checkpoint(p, type="Algorithm", state={"tag": 2}, policies={"p0": {"w": np.full(10, 2)}}, format=fmt)


def _entry(manifest_dir: Path, rel: str) -> FileEntry:
    return read_manifest(manifest_dir).files[rel]


def test_a_file_the_new_checkpoint_does_not_list_is_changed_not_missing(tmp_path):
    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.ones(10)}}, format="msgpack")
    top, pol = _entry(p, "algorithm_state.msgpck"), _entry(p / "policies" / "p0", "policy_state.msgpck")
    _swap_format(p)
    with pytest.raises(ChangedWhileReadError):
        read_verified(p, "algorithm_state.msgpck", top)
    with pytest.raises(ChangedWhileReadError):
        check_file(p, "algorithm_state.msgpck", top)
    with pytest.raises(ChangedWhileReadError):
        check_file(p, "policies/p0/policy_state.msgpck", pol)


def test_a_file_missing_from_an_unchanged_checkpoint_is_still_missing(tmp_path):
    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.ones(10)}}, format="msgpack")
    pol = _entry(p / "policies" / "p0", "policy_state.msgpck")
    (p / "policies" / "p0" / "policy_state.msgpck").unlink()
    assert "policy_state.msgpck" in check_file(p, "policies/p0/policy_state.msgpck", pol)


def test_verify_of_a_checkpoint_replaced_meanwhile_says_so(tmp_path, monkeypatch):
    """The swap lands after the manifests were checked, before the folder is walked for
    unlisted files: the new checkpoint's files are no problem of the one verified."""
    import amber.utils.checkpoints as checkpoints

    p = tmp_path / "ck"
    write_checkpoint(p, type="Algorithm", state={"tag": 1}, policies={"p0": {"w": np.ones(10)}}, format="msgpack")
    real = checkpoints._unlisted

    def swapped_first(*args, **kwargs):
        _swap_format(p)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "_unlisted", swapped_first)
    with pytest.raises(ChangedWhileReadError, match="verify it again"):
        checkpoints.verify(p)
    monkeypatch.setattr(checkpoints, "_unlisted", real)
    assert checkpoints.verify(p).ok


def test_convert_framework_in_place_keeps_a_save_committed_meanwhile(tmp_path, monkeypatch):
    from amber.algorithms.ppo import PPOConfig
    from amber.cli.convert import convert_framework

    p = tmp_path / "ck"
    algo = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}).build()
    algo.save(p, format="msgpack")
    algo.stop()
    _save_meanwhile(monkeypatch, p, "msgpack")
    with pytest.raises(CheckpointWriteError, match="changed meanwhile"):
        convert_framework(p, p, "torch")
    assert _tag(p) == 2
