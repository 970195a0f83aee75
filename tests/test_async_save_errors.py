"""Background saves' errors are never lost: raised by result(), by the next save or stop(), or
printed at exit, each once, also for a save that a background write started itself."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import amber
import amber.checkpoint as checkpoint_module
from amber.async_save import SaveHandle, wait_for_saves
from amber.errors import CheckpointWriteError

WARNING = "amber: warning: the background save to"


@pytest.fixture(autouse=True)
def _settled():
    """No test leaves a save running, or an error for the next test's save to raise."""
    yield
    for _ in range(3):  # one error per call
        try:
            wait_for_saves()
        except Exception:  # noqa: BLE001 - a test that expected its failure already checked it
            pass


def run_script(script: str, *args: object) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (the repo's python), as a user's script ends."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def nested_failing(monkeypatch, tmp_path):
    """Every background write of a checkpoint named ``outer`` starts a save of its own, with
    ``block=False``, onto a regular file (so it fails) and leaves its handle alone."""
    (tmp_path / "file").write_text("")
    real, inner = checkpoint_module.write_checkpoint, []

    def writing(path, **kwargs):
        if Path(path).name == "outer":
            inner.append(amber.save({"w": 2}, tmp_path / "file" / "inner", block=False))
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", writing)
    return inner


def test_a_failed_save_started_by_a_background_write_is_raised_by_the_next_save(tmp_path, nested_failing):
    outer = amber.save({"w": 1}, tmp_path / "outer", block=False)
    assert outer.result(timeout=60) == tmp_path / "outer"
    assert nested_failing[0].done() and not (tmp_path / "next").exists()
    with pytest.raises(CheckpointWriteError, match="file/inner"):
        amber.save({"w": 3}, tmp_path / "next")
    assert not (tmp_path / "next").exists()  # the save that raised it did not start
    assert amber.save({"w": 3}, tmp_path / "next") == tmp_path / "next"  # raised once


def test_a_failed_save_started_by_a_background_write_is_not_raised_once_retrieved(tmp_path, nested_failing):
    amber.save({"w": 1}, tmp_path / "outer", block=False).result(timeout=60)
    assert isinstance(nested_failing[0].exception(), CheckpointWriteError)
    wait_for_saves()  # asked for: not raised again


def test_a_save_ending_as_exception_times_out_keeps_its_error_unseen(tmp_path, monkeypatch):
    """A wait that times out has not shown the error, even if the save ended just after it."""
    handle: SaveHandle[Path] = SaveHandle(tmp_path / "ck")
    handle.set_running_or_notify_cancel()
    error = CheckpointWriteError("saving ck failed", path=tmp_path / "ck")

    def ends_at_the_timeout(self, timeout=None):
        if not handle.done():  # the writer, right then
            handle._error = error
            concurrent.futures.Future.set_exception(handle, error)
        raise concurrent.futures.TimeoutError

    monkeypatch.setattr(concurrent.futures.Future, "exception", ends_at_the_timeout)
    monkeypatch.setattr(concurrent.futures.Future, "result", ends_at_the_timeout)
    for ask in (handle.exception, handle.result):
        with pytest.raises(concurrent.futures.TimeoutError):
            ask(timeout=0.01)
        assert handle.unretrieved_error() is error


FAILS_INSIDE_A_SAVE = """
import sys
from pathlib import Path
import amber, amber.checkpoint

out = Path(sys.argv[1])
(out / "file").write_text("")
real = amber.checkpoint.write_checkpoint
def writing(path, **kwargs):
    if Path(path).name == "outer":
        amber.save({"w": 2}, out / "file" / "inner", block=False)
    return real(path, **kwargs)
amber.checkpoint.write_checkpoint = writing
print("outer:", amber.save({"w": 1}, out / "outer", block=False).result(timeout=60).name)
"""


def test_a_failed_save_started_by_a_background_write_is_printed_at_exit(tmp_path):
    proc = run_script(FAILS_INSIDE_A_SAVE, tmp_path)
    assert "outer: outer" in proc.stdout, proc.stderr
    assert f"{WARNING} {tmp_path / 'file' / 'inner'} failed" in proc.stderr
    assert "CheckpointWriteError" in proc.stderr and "Not a directory" in proc.stderr
    assert proc.returncode == 0  # Python ignores what exit hooks raise: the status cannot say it


@pytest.mark.parametrize("ask", ["result", "exception"])
def test_an_error_asked_for_is_not_printed_at_exit(tmp_path, ask):
    (tmp_path / "file").write_text("")
    script = f"""
    import sys, amber
    handle = amber.save({{'w': 1}}, sys.argv[1], block=False)
    try:
        print("asked:", type(handle.{ask}(timeout=60)).__name__)
    except Exception as e:
        print("asked:", type(e).__name__)
    """
    proc = run_script(script, tmp_path / "file" / "ckpt")
    assert "asked: CheckpointWriteError" in proc.stdout, proc.stderr
    assert proc.returncode == 0 and "warning" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_exit_report_needs_no_sys_stderr_and_lets_later_exit_hooks_run(tmp_path):
    """With ``sys.stderr`` gone (None, as under pythonw), the error goes to the process's stderr,
    and the exit hooks threading runs after amber's (thread pools' joins) still run."""
    (tmp_path / "file").write_text("")
    script = """
    import sys, threading, amber
    threading._register_atexit(lambda: print("later exit hook ran", flush=True))  # runs after amber's
    amber.save({'w': 1}, sys.argv[1], block=False)
    sys.stderr = None
    """
    proc = run_script(script, tmp_path / "file" / "ckpt")
    assert "later exit hook ran" in proc.stdout and WARNING not in proc.stdout
    assert f"{WARNING} {tmp_path / 'file' / 'ckpt'} failed" in proc.stderr
