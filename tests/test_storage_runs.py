"""Runs kept in remote storage (``amber train --storage URL``, ``--resume URL``, ``storage_path``):
a new run never mixes into another's, one ``amber train`` at a time writes a run, the remote
curves are the run's, and remote saves, reads and deletions keep to what a committed checkpoint is.

Against a real S3-compatible server (moto's, the fixture of ``test_remote_storage``); the CLI runs
in this process with fsspec's configuration pointing at it, or as a subprocess with the same
settings in its environment.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import amber
from amber.algorithms.algorithm import Algorithm
from amber.errors import CheckpointWriteError, NotACheckpointError
from amber.policy.policy import Policy
from amber.utils.checkpoints import get_checkpoint_info, verify
from tests.test_remote_storage import make_bucket, options, s3_server, small_ppo  # noqa: F401 - s3_server: the fixture

fsspec = pytest.importorskip("fsspec")

TINY = ["--algo", "PPO", "--env", "CartPole-v1", "--seed", "0", "--format", "msgpack", "-o", "train_batch_size=64",
        "-o", "minibatch_size=32", "-o", "num_epochs=1", "-o", "model.fcnet_hiddens=[8]"]
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def s3(s3_server, monkeypatch):  # noqa: F811 - the fixture imported above
    """A fresh bucket, its file system, and fsspec configured to reach it (as the CLI is); the
    server's endpoint."""
    opts = options(s3_server.endpoint)
    del opts["config_kwargs"]  # (botocore rewrites it in place: the next file system would be another one)
    monkeypatch.setitem(fsspec.config.conf, "s3", opts)
    return make_bucket(s3_server.endpoint), fsspec.filesystem("s3"), s3_server.endpoint  # amber's instance


def _train(*args: str):
    from amber.cli import cli

    return CliRunner().invoke(cli, ["train", *args])


def _names(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in fs.ls(prefix))


def _iterations(text: str) -> list[int]:
    return [int(r["training_iteration"]) for r in csv.DictReader(io.StringIO(text))]


# -- amber train with --storage --------------------------------------------------------------------

def test_a_new_run_refuses_a_storage_destination_holding_another_runs_checkpoints(s3, tmp_path):
    """The check looked only at --checkpoint-dir: a second run of the same name on another machine
    mixed into the first one's storage, its retention deleted that run's checkpoints and its curves
    replaced that run's progress.csv."""
    bucket, fs, _ = s3
    first = _train(*TINY, "--stop-iters", "2", "--checkpoint-every", "1", "--num-to-keep", "2",
                   "--checkpoint-dir", str(tmp_path / "m1" / "exp"), "--storage", f"s3://{bucket}/runs")
    assert first.exit_code == 0, first.output
    before = _names(fs, f"{bucket}/runs/exp"), fs.cat_file(f"{bucket}/runs/exp/progress.csv")
    assert before[0] == ["checkpoint_000001", "checkpoint_000002", "progress.csv", "result.json"]
    second = _train(*TINY, "--stop-iters", "1", "--num-to-keep", "1", "--checkpoint-dir", str(tmp_path / "m2" / "exp"),
                    "--storage", f"s3://{bucket}/runs")
    assert second.exit_code == 2, second.output
    assert (f"s3://{bucket}/runs/exp already holds a run's checkpoints (checkpoint_000001, checkpoint_000002): "
            f"continue that run with `amber train --resume s3://{bucket}/runs/exp ...`") in second.stderr
    assert (_names(fs, f"{bucket}/runs/exp"), fs.cat_file(f"{bucket}/runs/exp/progress.csv")) == before
    # a local --storage DIR likewise
    store = tmp_path / "store"
    assert _train(*TINY, "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "m1" / "b"),
                  "--storage", str(store)).exit_code == 0
    second = _train(*TINY, "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "m2" / "b"), "--storage", str(store))
    assert second.exit_code == 2 and f"{store / 'b'} already holds a run's checkpoints" in second.stderr
    assert _iterations((store / "b" / "progress.csv").read_text()) == [1]


def _s3_env(endpoint: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "FSSPEC_S3_ENDPOINT_URL": endpoint, "FSSPEC_S3_KEY": "testing", "FSSPEC_S3_SECRET": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AMBER_RESULTS_DIR": str(tmp_path / "results")}


def test_a_second_resume_of_a_remote_run_still_training_stops_at_once(s3, tmp_path):
    """Nothing stopped two `amber train` from writing one run in storage: the local lock covers only
    the local directory. The run holds a lease in its prefix; a killed holder's lease is taken over
    at once on its host."""
    from amber.cli.run_lease import LEASE_FILE

    bucket, fs, endpoint = s3
    run = f"s3://{bucket}/runs/r"
    proc = subprocess.Popen([sys.executable, "-m", "amber.cli", "train", *TINY, "--stop-iters", "1000000",
                             "--checkpoint-every", "1", "--num-to-keep", "2", "--checkpoint-dir", str(tmp_path / "r"),
                             "--storage", f"s3://{bucket}/runs"], cwd=tmp_path, env=_s3_env(endpoint, tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not fs.exists(f"{bucket}/runs/r/checkpoint_000001/checkpoint.json"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
            fs.invalidate_cache()
        assert json.loads(fs.cat_file(f"{bucket}/runs/r/{LEASE_FILE}"))["pid"] == proc.pid
        second = _train("--resume", run, "--stop-iters", "1000000", "--checkpoint-dir", str(tmp_path / "other"))
        assert second.exit_code == 2, second.output
        assert (f"{run} is being trained by another amber train (pid {proc.pid} on {socket.gethostname()}"
                in second.stderr)
        assert not (tmp_path / "other" / "progress.csv").exists()
    finally:
        proc.kill()  # SIGKILL: its lease stays behind
        proc.communicate()
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/runs/r/{LEASE_FILE}")
    done = max(int(n.split("_")[1]) for n in _names(fs, f"{bucket}/runs/r") if n.startswith("checkpoint_"))
    resumed = _train("--resume", run, "--stop-iters", str(done + 1), "--checkpoint-dir", str(tmp_path / "other"))
    assert resumed.exit_code == 0, resumed.output  # the holder is dead: its lease is no more
    assert resumed.output.splitlines()[-1] == f"{run}/checkpoint_{done + 1:06d}"
    assert LEASE_FILE not in _names(fs, f"{bucket}/runs/r")  # released


def test_a_lease_of_another_host_stands_while_fresh(tmp_path):
    from amber.cli.base import AmberCliError
    from amber.cli.run_lease import LEASE_FILE, TTL_S, storage_lease

    url = f"memory://amber-tests/{uuid.uuid4().hex}/run"
    fs = fsspec.filesystem("memory")
    key = f"{url[len('memory://') - 1:]}/{LEASE_FILE}"
    fs.pipe_file(key, json.dumps({"pid": 1, "host": "elsewhere", "token": "x", "time": time.time()}).encode())
    with pytest.raises(AmberCliError, match=r"being trained by another amber train \(pid 1 on elsewhere"), \
            storage_lease(url):
        pass
    assert json.loads(fs.cat_file(key))["token"] == "x"
    fs.pipe_file(key, json.dumps({"pid": 1, "host": "elsewhere", "token": "x", "time": time.time() - TTL_S - 1}).encode())
    with storage_lease(url):  # not renewed for longer than the TTL: taken over
        assert json.loads(fs.cat_file(key))["pid"] == os.getpid()
    assert not fs.exists(key)


def test_resuming_from_storage_keeps_the_remote_curves(s3, tmp_path):
    """Machine A trains, machine B resumes, A resumes again: A's stale local progress.csv was
    appended to and copied over the remote one (iterations 3 and 4 lost)."""
    bucket, _, _ = s3
    run = f"s3://{bucket}/runs/exp"
    assert _train(*TINY, "--stop-iters", "2", "--checkpoint-dir", str(tmp_path / "A" / "exp"),
                  "--storage", f"s3://{bucket}/runs").exit_code == 0
    assert _train("--resume", run, "--stop-iters", "4", "--checkpoint-dir", str(tmp_path / "B" / "exp")).exit_code == 0
    again = _train("--resume", run, "--stop-iters", "6", "--checkpoint-dir", str(tmp_path / "A" / "exp"))
    assert again.exit_code == 0, again.output
    with fsspec.open(f"{run}/progress.csv", "rt") as f:
        assert _iterations(f.read()) == [1, 2, 3, 4, 5, 6]
    assert _iterations((tmp_path / "A" / "exp" / "progress.csv").read_text()) == [1, 2, 3, 4, 5, 6]


def test_resuming_a_checkpoints_url_is_refused(s3, tmp_path):
    """`--resume URL/exp/checkpoint_000001` trained on and wrote new checkpoints inside that one."""
    bucket, fs, _ = s3
    assert _train(*TINY, "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "exp"),
                  "--storage", f"s3://{bucket}/runs").exit_code == 0
    ckpt = f"s3://{bucket}/runs/exp/checkpoint_000001"
    before = sorted(fs.find(ckpt))
    result = _train("--resume", ckpt, "--stop-iters", "2")
    assert result.exit_code == 2, result.output
    assert f"it is a checkpoint itself: give its run's directory, --resume s3://{bucket}/runs/exp" in result.stderr
    fs.invalidate_cache()
    assert sorted(fs.find(ckpt)) == before and verify(ckpt).ok


# -- saves, reads and deletions at URLs ----------------------------------------------------------

def test_a_save_to_a_url_puts_no_curves_beside_it_and_never_goes_inside_a_checkpoint(s3):
    """algo.save(URL) uploaded progress.csv and result.json into URL's parent (each model saved
    beside overwrote them), and a save inside a committed checkpoint was not refused."""
    bucket, fs, _ = s3
    algo = small_ppo(format="msgpack")
    algo.train()
    algo.save(f"s3://{bucket}/models/ppo_a")
    assert _names(fs, f"{bucket}/models") == ["ppo_a"]
    with pytest.raises(CheckpointWriteError, match=f"it is inside the checkpoint s3://{bucket}/models/ppo_a"):
        algo.save(f"s3://{bucket}/models/ppo_a/best")
    with pytest.raises(CheckpointWriteError, match="it is inside the checkpoint"):
        amber.save({"a": 1}, f"s3://{bucket}/models/ppo_a/policies/default_policy/x")
    assert verify(f"s3://{bucket}/models/ppo_a").ok
    algo.stop()


def test_a_url_that_is_no_checkpoint_is_refused_from_its_listing(s3, monkeypatch):
    """`amber inspect` / from_checkpoint of a run's prefix (or a bucket) downloaded every object
    below it before refusing it."""
    bucket, fs, _ = s3
    manager = amber.CheckpointManager(f"s3://{bucket}/runs/a")
    algo = small_ppo(format="msgpack")
    for _ in range(2):
        algo.train()
        manager.save(algo)
    fs.put(str(FIXTURES / "rllib-2.10" / "ppo_msgpack"), f"{bucket}/rllib/ppo", recursive=True)
    fetched: list[str] = []
    real_get = fs.get
    monkeypatch.setattr(fs, "get", lambda rpath, lpath, **kw: (fetched.extend(rpath), real_get(rpath, lpath, **kw)))
    for url in (f"s3://{bucket}/runs/a", f"s3://{bucket}"):
        with pytest.raises(NotACheckpointError) as info:
            get_checkpoint_info(url)
        assert fetched == []  # refused from the listing
        assert f"{url} is not an amber checkpoint: no checkpoint.json" in str(info.value)
        with pytest.raises(NotACheckpointError, match="it holds checkpoints below it"):
            Algorithm.from_checkpoint(url)
        assert fetched == []
    assert get_checkpoint_info(f"s3://{bucket}/rllib/ppo")["type"] == "Algorithm"  # another system's: read
    algo.stop()


def test_what_a_killed_remote_deletion_left_is_removed_by_the_next_save(s3, monkeypatch):
    """A deletion cut between its requests (manifest gone, the rest not) left a half-deleted
    checkpoint that nothing recognised or removed."""
    bucket, fs, _ = s3
    root = f"s3://{bucket}/run"
    manager = amber.CheckpointManager(root, num_to_keep=1)
    algo = small_ppo(format="msgpack")
    algo.train()
    manager.save(algo)

    real_rm, calls = fs.rm, []

    def dies(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("the process died here")
        return real_rm(*args, **kwargs)

    monkeypatch.setattr(fs, "rm", dies)  # the rest of checkpoint_000001 is never deleted
    algo.train()
    manager.save(algo)
    assert "checkpoint.json" not in _names(fs, f"{bucket}/run/checkpoint_000001")
    with pytest.raises(NotACheckpointError, match="did not finish"):
        get_checkpoint_info(f"{root}/checkpoint_000001")
    algo.train()
    manager.save(algo)
    assert _names(fs, f"{bucket}/run") == ["checkpoint_000003"]
    algo.stop()


def test_a_policy_of_an_unfinished_remote_upload_is_refused(s3):
    """Policy.from_checkpoint(URL/policies/ID) loaded the policy of an upload whose top manifest
    (the commit) never went up."""
    bucket, fs, _ = s3
    url = f"s3://{bucket}/ck"
    algo = small_ppo(format="msgpack")
    algo.train()
    algo.save(url)
    assert Policy.from_checkpoint(f"{url}/policies/default_policy") is not None
    fs.pipe_file(f"{bucket}/ck/.amber-uploading", b"{}")  # an upload's state before its commit
    fs.rm_file(f"{bucket}/ck/checkpoint.json")
    for read in (lambda: Policy.from_checkpoint(f"{url}/policies/default_policy"),
                 lambda: get_checkpoint_info(f"{url}/policies/default_policy")):
        with pytest.raises(NotACheckpointError, match=f"is a policy of {url}, an upload that did not finish"):
            read()
    with pytest.raises(NotACheckpointError, match="did not finish"):
        Algorithm.from_checkpoint(url)
    algo.stop()
