"""``amber train --resume URL`` keeps the fuller copy of the run's learning curves (the local one,
or the one beside its checkpoints), and a refused remote run writes no lease, never one inside a
checkpoint. With fsspec's memory file system as the storage."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from amber.utils.checkpoints import verify

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402 - after the importorskip

TINY = ["--algo", "PPO", "--env", "CartPole-v1", "--seed", "0", "--format", "msgpack", "-o", "train_batch_size=64",
        "-o", "minibatch_size=32", "-o", "num_epochs=1", "-o", "model.fcnet_hiddens=[8]"]


@pytest.fixture
def runs():
    """A fresh ``memory://`` prefix for runs (removed after the test)."""
    root = f"memory://amber-resume-curves/{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory:/"):]):
        fs.rm(root[len("memory:/"):], recursive=True)


@pytest.fixture
def writes(monkeypatch):
    """Every path written through the memory file system's ``pipe_file`` (the lease's writes)."""
    seen: list[str] = []
    original = MemoryFileSystem.pipe_file

    def pipe_file(self, path, *args, **kwargs):
        seen.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", pipe_file)
    return seen


def _train(*args: str):
    from amber.cli import cli

    return CliRunner().invoke(cli, ["train", *args])


def _iterations(text: str) -> list[int]:
    return [int(r["training_iteration"]) for r in csv.DictReader(io.StringIO(text))]


def _json_iterations(text: str) -> list[int]:
    return [json.loads(line)["training_iteration"] for line in text.splitlines() if line.strip()]


def _remote(url: str) -> str:
    fs = fsspec.filesystem("memory")
    fs.invalidate_cache()
    return fs.cat_file(url[len("memory:/"):]).decode()


def _three_iterations(runs: str, tmp_path: Path) -> tuple[Path, str]:
    local = tmp_path / "exp"
    trained = _train(*TINY, "--stop-iters", "3", "--checkpoint-every", "1", "--checkpoint-dir", str(local),
                     "--storage", runs)
    assert trained.exit_code == 0, trained.output
    return local, f"{runs}/exp"


# -- item 1: the learning curves of a resumed remote run -------------------------------------------

@pytest.mark.parametrize("remote_has", ["none", "iteration 1"])
def test_a_resume_keeps_the_local_curves_when_the_remote_ones_are_missing_or_behind(runs, tmp_path, remote_has):
    """The upload of the curves had failed (it only warns): the resume replaced the local curves
    with the remote ones (none: only iteration 4 left), then uploaded that stub over the run's."""
    local, run = _three_iterations(runs, tmp_path)
    fs = fsspec.filesystem("memory")
    for name in ("progress.csv", "result.json"):
        key = f"{run[len('memory:/'):]}/{name}"
        if remote_has == "none":
            fs.rm_file(key)
        else:  # an upload after iteration 1 was the last that got through
            text = (local / name).read_text()
            fs.pipe_file(key, ("".join(text.splitlines(keepends=True)[:2])).encode())
    resumed = _train("--resume", run, "--stop-iters", "4", "--checkpoint-dir", str(local))
    assert resumed.exit_code == 0, resumed.output
    assert _iterations((local / "progress.csv").read_text()) == [1, 2, 3, 4]
    assert _json_iterations((local / "result.json").read_text()) == [1, 2, 3, 4]
    assert _iterations(_remote(f"{run}/progress.csv")) == [1, 2, 3, 4]
    assert _json_iterations(_remote(f"{run}/result.json")) == [1, 2, 3, 4]


def test_a_resume_that_trains_nothing_uploads_the_fuller_local_curves_again(runs, tmp_path):
    local, run = _three_iterations(runs, tmp_path)
    fsspec.filesystem("memory").rm_file(f"{run[len('memory:/'):]}/progress.csv")
    resumed = _train("--resume", run, "--stop-iters", "3", "--checkpoint-dir", str(local))
    assert resumed.exit_code == 0, resumed.output
    assert "nothing to train" in resumed.stderr
    assert _iterations((local / "progress.csv").read_text()) == [1, 2, 3]
    assert _iterations(_remote(f"{run}/progress.csv")) == [1, 2, 3]


def test_a_resume_takes_the_remote_curves_over_stale_local_ones(runs, tmp_path):
    """Machine A trains, machine B resumes, A resumes again: A's stale local curves were kept and
    copied over the run's (iterations 3 and 4 lost)."""
    assert _train(*TINY, "--stop-iters", "2", "--checkpoint-dir", str(tmp_path / "A" / "exp"),
                  "--storage", runs).exit_code == 0
    run = f"{runs}/exp"
    assert _train("--resume", run, "--stop-iters", "4", "--checkpoint-dir", str(tmp_path / "B" / "exp")).exit_code == 0
    again = _train("--resume", run, "--stop-iters", "6", "--checkpoint-dir", str(tmp_path / "A" / "exp"))
    assert again.exit_code == 0, again.output
    assert _iterations((tmp_path / "A" / "exp" / "progress.csv").read_text()) == [1, 2, 3, 4, 5, 6]
    assert _json_iterations((tmp_path / "A" / "exp" / "result.json").read_text()) == [1, 2, 3, 4, 5, 6]
    assert _iterations(_remote(f"{run}/progress.csv")) == [1, 2, 3, 4, 5, 6]


def test_on_a_tie_up_to_the_checkpoint_the_remote_curves_are_taken(runs, tmp_path):
    """The local copy also holds an iteration past the checkpoint (a run killed before saving it):
    it holds no more of the run up to its checkpoint, so the remote copy is taken (no row twice)."""
    local, run = _three_iterations(runs, tmp_path)
    text = (local / "progress.csv").read_text()
    (local / "progress.csv").write_text(text + text.splitlines(keepends=True)[-1].replace("3,", "4,", 1))
    resumed = _train("--resume", run, "--stop-iters", "4", "--checkpoint-dir", str(local))
    assert resumed.exit_code == 0, resumed.output
    assert _iterations((local / "progress.csv").read_text()) == [1, 2, 3, 4]


# -- item 2: no lease before the checks, never one in a checkpoint ---------------------------------

@pytest.mark.parametrize("where", ["is", "inside"])
def test_a_new_run_whose_storage_is_or_lies_in_a_checkpoint_writes_nothing(runs, tmp_path, writes, where):
    """The lease was written inside the committed checkpoint, then the run refused and removed it
    (a kill in between left an unlisted file there: verify failed)."""
    _, run = _three_iterations(runs, tmp_path)
    ckpt = f"{run}/checkpoint_000001"
    writes.clear()
    if where == "is":  # --storage URL/<name> is the checkpoint
        args = ["--checkpoint-dir", str(tmp_path / "checkpoint_000001"), "--storage", run]
    else:
        args = ["--checkpoint-dir", str(tmp_path / "other"), "--storage", ckpt]
    refused = _train(*TINY, "--stop-iters", "1", *args)
    assert refused.exit_code == 2, refused.output
    assert "checkpoint" in refused.stderr and "give --storage a directory of its own" in refused.stderr
    assert writes == []
    assert verify(ckpt).ok


def test_a_resume_of_a_checkpoints_url_writes_nothing(runs, tmp_path, writes):
    _, run = _three_iterations(runs, tmp_path)
    writes.clear()
    refused = _train("--resume", f"{run}/checkpoint_000001", "--stop-iters", "4",
                     "--checkpoint-dir", str(tmp_path / "m2"))
    assert refused.exit_code == 2, refused.output
    assert "it is a checkpoint itself" in refused.stderr
    assert writes == []


def test_a_resume_of_a_url_holding_no_checkpoint_writes_nothing(runs, tmp_path, writes):
    refused = _train("--resume", f"{runs}/empty", "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "x"))
    assert refused.exit_code == 2, refused.output
    assert "holds no amber checkpoint" in refused.stderr
    assert writes == []


def test_a_resume_of_a_run_in_its_first_iteration_names_who_trains_it(runs, tmp_path, writes):
    from amber.cli.run_lease import storage_lease

    with storage_lease(f"{runs}/young"):
        refused = _train("--resume", f"{runs}/young", "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "x"))
    assert refused.exit_code == 2, refused.output
    assert "is being trained by another amber train" in refused.stderr


def test_the_lease_is_never_written_into_a_checkpoint(runs, tmp_path, writes):
    from amber.cli.base import AmberCliError
    from amber.cli.run_lease import storage_lease

    _, run = _three_iterations(runs, tmp_path)
    for url in (f"{run}/checkpoint_000001", f"{run}/checkpoint_000001/sub"):
        writes.clear()
        with pytest.raises(AmberCliError, match="nothing may be written into a checkpoint"), storage_lease(url):
            pass
        assert writes == []
    assert verify(f"{run}/checkpoint_000001").ok
