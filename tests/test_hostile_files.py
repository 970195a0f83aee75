"""A checkpoint from a stranger can neither hang, escape, spoof nor destroy (reliability rules 3, 6, 12, 14).

Each test builds the hostile input for real: a FIFO, a unix socket or a device
in place of a manifest or a state file, a symlinked ``policies/`` directory,
another tool's files at a save's target, and manifests edited (their own
digest recomputed, as an attacker would) to carry bidi overrides, terminal
escape sequences and lone surrogates. Whatever could block runs under a
timeout, so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber.atomic import commit, staging
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.cli import CliState, cli
from amber.cli.base import escape
from amber.digest import hash_file
from amber.errors import CheckpointError, CheckpointWriteError, CorruptCheckpointError, InvalidIdError
from amber.layout import MANIFEST, check_id
from amber.utils.checkpoints import get_checkpoint_info, verify
from tests.treeutil import write_raw_manifest

#: Seconds any read may take before it counts as hung.
TIMEOUT = 10
#: What a terminal would act on, or what would disguise text, if printed raw.
RAW = ("\x1b", "\x07", "\x9b", "\u202e", "\u200b", "\u2028")


def call_within(fn: Callable[..., Any], *args: Any, fifos: tuple[Path, ...] = (), **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a thread: its result, or the exception it raised.

    Fails the test if it has not returned after :data:`TIMEOUT` seconds, after
    opening each FIFO in ``fifos`` for writing and closing it again, which
    wakes a reader blocked on it (so no thread is left hanging).
    """
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(TIMEOUT)
        pytest.fail(f"{getattr(fn, '__name__', fn)} blocked for more than {TIMEOUT}s")
    return out.get("error", out.get("value"))


def refused(fn: Callable[..., Any], *args: Any, fifos: tuple[Path, ...] = (), **kwargs: Any) -> CheckpointError:
    """The :class:`CheckpointError` ``fn`` raised in time (anything else fails the test)."""
    result = call_within(fn, *args, fifos=fifos, **kwargs)
    assert isinstance(result, CheckpointError), f"expected a CheckpointError, got {result!r}"
    return result


def algo(path: Path, pm: Any, **kwargs: Any) -> Path:
    return write_checkpoint(path, type="Algorithm", state={"iteration": 3}, format="msgpack", pm=pm,
                            policies={"pol1": {"w": np.arange(4.0)}}, metadata={"note": "test"}, **kwargs)


def edit_manifest(directory: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit ``directory/checkpoint.json`` and recompute its own digest, as an attacker can."""
    raw = json.loads((directory / MANIFEST).read_text())
    edit(raw)
    write_raw_manifest(directory / MANIFEST, raw)


def invoke(pm: Any, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), obj=CliState(plugin_manager=pm))


def assert_no_raw(text: str) -> None:
    for c in RAW:
        assert c not in text, f"{c!r} printed raw in {text!r}"


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (not following links): a file's bytes, a link's target."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


# --- files that are not files: FIFOs, sockets, devices ---------------------------------------


def test_fifo_as_the_manifest_neither_hangs_nor_is_read(tmp_path):
    path = amber.save({"x": 1}, tmp_path / "ck")
    (path / MANIFEST).unlink()
    os.mkfifo(path / MANIFEST)
    fifos = (path / MANIFEST,)
    for fn in (amber.load, get_checkpoint_info):
        e = refused(fn, path, fifos=fifos)
        assert isinstance(e, CorruptCheckpointError)
        assert str(path / MANIFEST) in str(e) and "FIFO" in str(e)
    report = call_within(verify, path, fifos=fifos)
    assert report.problems == [f"{path / MANIFEST}: is a FIFO (named pipe), not a regular file; "
                               "refused before reading"]


def test_fifo_as_a_state_file_neither_hangs_nor_is_read(tmp_path):
    path = amber.save({"x": np.arange(3.0)}, tmp_path / "ck")
    state = path / json.loads((path / MANIFEST).read_text())["state_file"]
    state.unlink()
    os.mkfifo(state)
    e = refused(amber.load, path, fifos=(state,))
    assert isinstance(e, CorruptCheckpointError) and str(state) in str(e) and "FIFO" in str(e)
    report = call_within(verify, path, fifos=(state,))
    assert not report.ok
    assert any(str(state) in p and "FIFO" in p for p in report.problems), report.problems


def test_fifo_as_a_policy_manifest(tmp_path, bare_pm):
    path = algo(tmp_path / "ck", bare_pm)
    pman = path / "policies" / "pol1" / MANIFEST
    pman.unlink()
    os.mkfifo(pman)
    e = refused(read_checkpoint, path, pm=bare_pm, fifos=(pman,))
    assert str(pman) in str(e)
    info = call_within(get_checkpoint_info, path, fifos=(pman,))
    assert "FIFO" in info["policies"]["pol1"]["error"]
    report = call_within(verify, path, fifos=(pman,))
    assert any("FIFO" in p for p in report.problems)


def test_socket_as_a_state_file(tmp_path):
    path = amber.save({"x": 1}, tmp_path / "ck")
    state = path / json.loads((path / MANIFEST).read_text())["state_file"]
    state.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(os.fspath(state))
    assert stat.S_ISSOCK(os.lstat(state).st_mode)
    e = refused(amber.load, path)
    assert isinstance(e, CorruptCheckpointError) and str(state) in str(e) and "socket" in str(e)
    assert any("socket" in p for p in call_within(verify, path).problems)


def test_device_as_a_state_file(tmp_path):
    path = amber.save({"x": 1}, tmp_path / "ck")
    state = path / json.loads((path / MANIFEST).read_text())["state_file"]
    state.unlink()
    try:
        os.mknod(state, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: reading never ends
    except (PermissionError, AttributeError, OSError):
        pytest.skip("cannot create a device node here")
    e = refused(amber.load, path)
    assert isinstance(e, CorruptCheckpointError) and "device" in str(e)


def test_fifo_as_model_json_does_not_hang_an_export(tmp_path):
    pytest.importorskip("torch")
    from amber.errors import ExportError
    from amber.export import export_model
    from tests.test_export import dueling_graph

    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "model.json")
    e = refused(export_model, dueling_graph(), out, fifos=(out / "model.json",))
    assert isinstance(e, ExportError) and "FIFO" in str(e) and str(out / "model.json") in str(e)
    assert stat.S_ISFIFO(os.lstat(out / "model.json").st_mode) and os.listdir(out) == ["model.json"]


# --- links out of the checkpoint --------------------------------------------------------------


@pytest.mark.parametrize("linked", ["policies", "policies/pol1"])
def test_symlinked_policy_dirs_are_reported_never_followed(tmp_path, bare_pm, linked):
    path = algo(tmp_path / "ck", bare_pm)
    outside = tmp_path / "outside"
    (path / linked).rename(outside)
    (path / linked).symlink_to(outside, target_is_directory=True)
    info = get_checkpoint_info(path)
    entry = info["policies"]["pol1"]
    assert "files" not in entry and "symbolic link" in entry["error"]
    assert str(path / linked) in entry["error"]
    with pytest.raises(CorruptCheckpointError, match="symbolic link"):
        read_checkpoint(path, pm=bare_pm)
    report = verify(path)
    assert any("symbolic link" in p for p in report.problems), report.problems
    result = invoke(bare_pm, "inspect", str(path))
    assert result.exit_code == 0 and "symbolic link" in result.output
    assert "policy_state" not in result.output  # nothing was read from outside


# --- a save replaces an amber checkpoint, and nothing else ------------------------------------


def _foreign_dir(target: Path) -> None:
    target.mkdir()
    (target / MANIFEST).write_text('{"framework": "other-tool", "step": 100}')
    (target / "weights.bin").write_bytes(b"\x00\x01precious")


@pytest.mark.parametrize("extra", ["policies/p0/notes.txt", "policies/p0/model/", "policies/mine/", "policies/p0/link"])
def test_a_save_never_replaces_an_algorithm_checkpoint_with_files_in_a_policys_folder(tmp_path, extra):
    """Files a user put in a policy's folder are not the checkpoint's: a save over it, or
    retention, would have deleted them with it."""
    target = tmp_path / "target"

    def save(v):
        write_checkpoint(target, type="Algorithm", state={"v": v}, policies={"p0": {"w": v}, "p1": {"w": v}},
                         format="msgpack")
    save(1)
    save(2)  # an amber checkpoint and nothing else: replaced
    where = target / extra.rstrip("/")
    if extra.endswith("/"):
        where.mkdir()
        (where / "mine.bin").write_bytes(b"precious")
    elif extra.endswith("link"):
        where.symlink_to(tmp_path)
    else:
        where.write_text("mine")
    before = snapshot(tmp_path / "target")
    with pytest.raises(CheckpointWriteError, match=f"holding files that its checkpoint.json does not list "
                                                   f"\\('{extra.rstrip('/')}'\\)"):
        save(3)
    assert snapshot(tmp_path / "target") == before
    from amber.checkpoint_manager import CheckpointManager

    assert CheckpointManager(tmp_path, num_to_keep=1)._delete(target) is False  # retention leaves it too
    assert target.exists()


@pytest.mark.parametrize("kind", ["foreign-manifest", "other-files", "amber-plus-extra", "file", "symlink",
                                  "bad-digest", "newer-amber"])
def test_a_save_never_replaces_what_is_not_an_amber_checkpoint(tmp_path, kind):
    target = tmp_path / "target"
    if kind == "foreign-manifest":
        _foreign_dir(target)
    elif kind == "other-files":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif kind == "amber-plus-extra":
        amber.save({"x": 1}, target)
        (target / "notes.txt").write_text("mine")
    elif kind == "file":
        target.write_bytes(b"a file")
    elif kind == "newer-amber":  # its manifest cannot be verified by this amber
        amber.save({"x": 1}, target)
        edit_manifest(target, lambda raw: raw.update(checkpoint_version="99.0"))
    elif kind == "bad-digest":
        amber.save({"x": 1}, target)
        text = (target / MANIFEST).read_text()
        (target / MANIFEST).write_text(text.replace('"type"', '"type" ', 1).replace("State", "Stat", 1))
    else:
        real = tmp_path / "real"
        amber.save({"x": 1}, real)
        target.symlink_to(real, target_is_directory=True)
    before, linked = snapshot(tmp_path), snapshot(tmp_path / "real") if kind == "symlink" else None
    with pytest.raises(CheckpointWriteError) as e:
        amber.save({"x": 2}, target)
    assert str(target) in str(e.value)
    assert snapshot(tmp_path) == before  # byte for byte, and nothing staged beside it
    if linked is not None:
        assert snapshot(tmp_path / "real") == linked


def test_a_save_refused_at_the_commit_leaves_the_newcomer_untouched(tmp_path):
    """What appears at the target while a save is staging is checked again at the commit."""
    target = tmp_path / "target"
    with pytest.raises(CheckpointWriteError, match="not overwriting"), staging(target) as tmp:
        (tmp / "payload").write_bytes(b"new")
        _foreign_dir(target)
        before = snapshot(target)
        commit(tmp, target)
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_a_save_replaces_an_amber_checkpoint_or_an_empty_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    amber.save({"x": 1}, empty)
    amber.save({"x": 2}, empty)
    assert amber.load(empty) == {"x": 2}
    amber.save({"x": 3}, tmp_path / "a" / "nested")  # missing directories are made
    assert amber.load(tmp_path / "a" / "nested") == {"x": 3}


# --- ids and names that hide what they are ----------------------------------------------------


@pytest.mark.parametrize("bad", ["a\u202eb", "a\u200bb", "\ufeffa", "a\x1bb", "a\x9bb", "a\x85b",
                                 "a\u2028b", "a\u2029b", "a\ud800b", "a\udc80b", "a\tb", "a\x7fb"])
def test_check_id_refuses_hidden_characters(bad):
    with pytest.raises(InvalidIdError) as e:
        check_id(bad)
    assert_no_raw(str(e.value))
    assert "\ud800" not in str(e.value) and "\udc80" not in str(e.value)


@pytest.mark.parametrize("good", ["pol 1", "政策", "pölicy-1_a.b", "agent\u00a0one"])
def test_check_id_keeps_visible_names(good):
    assert check_id(good) == good


def test_a_save_with_a_bidi_policy_id_is_refused(tmp_path, bare_pm):
    with pytest.raises(InvalidIdError, match=r"\\u202e"):
        write_checkpoint(tmp_path / "ck", type="Algorithm", state={}, format="msgpack",
                         policies={"evil\u202egnp.exe": {"w": 1}}, pm=bare_pm)
    assert not (tmp_path / "ck").exists()


def test_a_bidi_policy_id_in_a_manifest_is_refused(tmp_path, bare_pm):
    path = algo(tmp_path / "ck", bare_pm)
    spoof = "pol\u202e1"
    (path / "policies" / "pol1").rename(path / "policies" / spoof)

    def relabel(raw: dict[str, Any]) -> None:
        raw["policy_ids"] = [spoof]
        raw["files"] = {k.replace("pol1", spoof): v for k, v in raw["files"].items()}

    edit_manifest(path, relabel)
    for fn in (read_checkpoint, get_checkpoint_info):
        with pytest.raises(CorruptCheckpointError, match=r"\\u202e") as e:
            fn(path)
        assert str(path / MANIFEST) in str(e.value)
    for args in (("inspect", str(path)), ("inspect", "--json", str(path)), ("verify", str(path))):
        result = invoke(bare_pm, *args)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output
        assert_no_raw(result.output)
        assert "\\u202e" in result.output


# --- what the CLI prints ----------------------------------------------------------------------


HOSTILE = {
    "note": "\x1b[2J\x1b]0;pwned\x07cleared",
    "\x1b[31mkey": "right\u202eleft",
    "zero": "a\u200bb\u2028c\x9b1m",
}


def test_inspect_escapes_everything_from_the_checkpoint(tmp_path, bare_pm):
    path = algo(tmp_path / "ck", bare_pm)
    edit_manifest(path, lambda raw: raw.update(metadata=HOSTILE, created="\x1b[1m2024\x1b[0m",
                                               amber_version="9\u202e1", python_version="3\x07"))
    result = invoke(bare_pm, "inspect", str(path))
    assert result.exit_code == 0, result.output
    assert_no_raw(result.output)
    for shown in ("\\x1b[2J", "\\x07", "\\u202e", "\\u200b", "\\u2028", "\\x9b"):
        assert shown in result.output
    as_json = invoke(bare_pm, "inspect", "--json", str(path))
    assert as_json.exit_code == 0
    assert_no_raw(as_json.output)
    assert as_json.output.isascii()
    assert json.loads(as_json.output)["metadata"] == HOSTILE  # escaped, not lost


def test_saved_metadata_with_escapes_is_shown_escaped(tmp_path, bare_pm):
    path = amber.save({"x": 1}, tmp_path / "ck", metadata=HOSTILE)
    result = invoke(bare_pm, "inspect", str(path))
    assert result.exit_code == 0 and "\\x1b[31mkey: right\\u202eleft" in result.output
    assert_no_raw(result.output)


def test_error_lines_are_escaped(tmp_path, bare_pm):
    bad = tmp_path / "\x1b[31mred\u202e"
    result = invoke(bare_pm, "inspect", str(bad))
    assert result.exit_code == 2
    assert_no_raw(result.output) and "\\x1b[31mred\\u202e" in result.output


def test_escape_helper():
    assert escape("plain text, ü, 政策") == "plain text, ü, 政策"
    assert escape("a\x1bb\u202ec\udc80d\U000e0001e\n") == "a\\x1bb\\u202ec\\udc80d\\U000e0001e\\x0a"


# --- names no file system can hold ------------------------------------------------------------


def _surrogate_file(path: Path, policy: str | None = None) -> None:
    """List a file named with a lone surrogate in the top manifest, or in ``policy``'s (whose
    entry in the top manifest is updated, so only the name is wrong)."""
    def add(raw: dict[str, Any]) -> None:
        raw["files"]["state\ud800.bin"] = {"size": 1, "digest": "xxh3_128:" + "0" * 32}

    if policy is None:
        edit_manifest(path, add)
        return
    edit_manifest(path / "policies" / policy, add)
    size, digest = hash_file(path / "policies" / policy / MANIFEST)
    edit_manifest(path, lambda raw: raw["files"].update(
        {f"policies/{policy}/{MANIFEST}": {"size": size, "digest": digest}}))


def test_a_lone_surrogate_file_name_is_a_corrupt_manifest(tmp_path):
    path = amber.save({"x": 1}, tmp_path / "ck")
    _surrogate_file(path)
    for fn in (amber.load, get_checkpoint_info):
        e = refused(fn, path)
        assert isinstance(e, CorruptCheckpointError) and "surrogate" in str(e) and "\\ud800" in str(e)
    report = verify(path)
    assert not report.ok and any("\\ud800" in p for p in report.problems)


def test_verify_lists_a_lone_surrogate_and_exits_1(tmp_path, bare_pm):
    path = algo(tmp_path / "ck", bare_pm)
    _surrogate_file(path, "pol1")
    result = invoke(bare_pm, "verify", str(path))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "\\ud800" in result.output


def test_verify_in_a_process_prints_surrogates_escaped(tmp_path):
    """The installed command, writing to a real pipe: an unlisted file whose name is not UTF-8,
    and a listed one with a lone surrogate, are problems, never a UnicodeEncodeError."""
    path = amber.save({"x": 1}, tmp_path / "ck")
    with open(os.path.join(os.fsencode(path), b"\xff\x1b.bin"), "wb"):  # not UTF-8, and an ESC
        pass
    run = subprocess.run([sys.executable, "-m", "amber.cli", "verify", str(path)], capture_output=True,
                         timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert run.returncode == 1, run.stderr
    assert b"Traceback" not in run.stderr and b"\x1b" not in run.stdout
    assert b"\\udcff\\x1b.bin: is not listed" in run.stdout
    _surrogate_file(path)
    run = subprocess.run([sys.executable, "-m", "amber.cli", "verify", str(path)], capture_output=True,
                         timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert run.returncode == 1 and b"Traceback" not in run.stderr, run.stderr
    assert b"\\ud800" in run.stdout


def test_a_target_name_with_a_lone_surrogate_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointWriteError, match="cannot be encoded"):
        amber.save({"x": 1}, tmp_path / "bad\ud800")
    e = refused(amber.load, tmp_path / "bad\ud800")
    assert isinstance(e, CheckpointError)
