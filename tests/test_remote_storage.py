"""Checkpoints at fsspec URLs: a real S3-compatible server (moto's server mode) on loopback,
and fsspec's in-memory file system for the quick cases.

The S3 cases start ``python -m moto.server`` as a child process; the failure cases cut
the connection mid-upload (a loopback proxy in front of the server) and kill the server
mid-upload (``kill -9``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

import amber
from amber.algorithms.algorithm import Algorithm
from amber.algorithms.ppo import PPOConfig
from amber.errors import (
    CheckpointWriteError,
    CorruptCheckpointError,
    MissingStorageError,
    NotACheckpointError,
)
from amber.policy.policy import Policy
from amber.utils.checkpoints import convert_checkpoint, get_checkpoint_info, migrate, verify

fsspec = pytest.importorskip("fsspec")
pytest.importorskip("s3fs")
pytest.importorskip("moto")
boto3 = pytest.importorskip("boto3")

REPO = Path(__file__).resolve().parents[1]


def small_ppo(**checkpointing):
    config = (PPOConfig().environment("CartPole-v1")
              .training(train_batch_size=128, minibatch_size=64, num_epochs=1, model={"fcnet_hiddens": [16]})
              .debugging(seed=3))
    if checkpointing:
        config = config.checkpointing(**checkpointing)
    return config.build()


def same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def mem():
    """A fresh prefix of fsspec's process-wide in-memory file system."""
    root = f"memory://amber-tests/{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root[len("memory://") - 1:]):
        fs.rm(root[len("memory://") - 1:], recursive=True)


# -- a real S3 server ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


class MotoServer:
    """``python -m moto.server`` on a loopback port, killable and restartable."""

    def __init__(self, env: dict | None = None) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, **(env or {})}
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_bucket(endpoint: str) -> str:
    name = f"b{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=name)
    return name


def options(endpoint: str) -> dict:
    # few retries and short timeouts, so that a dead server fails the save in seconds
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 2, "read_timeout": 10}}


@pytest.fixture(scope="module")
def s3_server():
    server = MotoServer()
    yield server
    server.kill()


class CuttableProxy:
    """A loopback TCP proxy to the S3 server that can cut every connection once ``budget``
    bytes more went upstream, and refuse new ones until :meth:`heal`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.port = free_port()
        self.budget: int | None = None
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if upstream and self.budget is not None:
                    with self.lock:
                        self.budget -= len(data)
                        if self.budget <= 0:
                            self._cut_all()
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _cut_all(self) -> None:
        self.cut.set()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets.clear()

    def heal(self) -> None:
        self.budget = None
        self.cut.clear()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# -- the API at URLs (in memory) --------------------------------------------------------------

def test_algorithm_and_policy_round_trip_at_a_url(mem):
    algo = small_ppo()
    algo.train()
    url = f"{mem}/run/ck"
    result = algo.save(url, format="msgpack")
    assert result.checkpoint.path == url
    restored = Algorithm.from_checkpoint(url)
    assert same_weights(restored.get_policy(), algo.get_policy())
    assert restored.train()["training_iteration"] == 2
    restored.restore(url)  # back to the checkpoint
    assert same_weights(restored.get_policy(), algo.get_policy())
    policy = Policy.from_checkpoint(f"{url}/policies/default_policy")
    assert same_weights(policy, algo.get_policy())
    exported = algo.get_policy().export_checkpoint(f"{mem}/policy", format="msgpack")
    assert same_weights(Policy.from_checkpoint(exported), algo.get_policy())
    algo.stop()
    restored.stop()


def test_background_saves_to_a_url(mem):
    algo = small_ppo()
    algo.train()
    handle = algo.save(f"{mem}/bg", format="msgpack", block=False)
    algo.train()  # training goes on while the upload runs
    assert handle.result().checkpoint.path == f"{mem}/bg"
    assert Algorithm.from_checkpoint(f"{mem}/bg").iteration == 1
    state = amber.save({"w": np.arange(4.0)}, f"{mem}/bg-state", block=False).result()
    assert state == f"{mem}/bg-state" and amber.load(state)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    algo.stop()


def test_a_subset_of_policies_downloads_only_their_files(mem):
    from amber.examples.envs.classes.multi_agent import MultiAgentCartPole

    config = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .training(train_batch_size=128, minibatch_size=64, num_epochs=1, model={"fcnet_hiddens": [8]})
              .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
              .debugging(seed=1))
    algo = config.build()
    url = f"{mem}/ma"
    algo.save(url, format="msgpack")
    fs = fsspec.filesystem("memory")
    for key in fs.find(url[len("memory://") - 1:] + "/policies/p1"):
        if not key.endswith("checkpoint.json"):
            fs.rm_file(key)  # p1's state is gone: only a read that never fetches it succeeds
    only = Policy.from_checkpoint(url, policy_ids=["p0"])
    assert list(only) == ["p0"] and same_weights(only["p0"], algo.get_policy("p0"))
    with pytest.raises(CorruptCheckpointError, match=f"{url}/policies/p1/"):
        Policy.from_checkpoint(url)
    algo.stop()


def test_a_state_tree_and_its_reports_at_a_url(mem, tmp_path):
    url = f"{mem}/state"
    returned = amber.save({"w": np.arange(6.0).reshape(2, 3), "step": 4}, url, format="msgpack")
    assert returned == url and amber.load(url)["step"] == 4
    info = get_checkpoint_info(url)
    assert info["checkpoint_dir"] == url and info["type"] == "State"
    report = verify(url)
    assert report.ok and all(str(p).startswith(url) for p in report.checked)
    converted = convert_checkpoint(url, f"{mem}/state-pickle", format="pickle", allow_pickle=True)
    assert amber.load(converted, allow_pickle=True)["step"] == 4
    result = migrate(url, tmp_path / "local-copy")  # from a URL into a local directory
    assert result.path == url and amber.load(tmp_path / "local-copy")["step"] == 4


def test_a_changed_byte_in_storage_is_caught_on_download(mem):
    url = f"{mem}/damaged"
    amber.save({"w": np.ones(1000)}, url, format="msgpack")
    fs = fsspec.filesystem("memory")
    state = max((k for k in fs.find(url[len("memory://") - 1:]) if "/state." in k), key=fs.size)
    data = bytearray(fs.cat_file(state))
    data[-1] ^= 0xFF  # same size: only the digest tells
    fs.pipe_file(state, bytes(data))
    with pytest.raises(CorruptCheckpointError) as e:
        amber.load(url)
    assert url in str(e.value) and "amber-download" not in str(e.value)
    assert not verify(url).ok


def test_an_unfinished_upload_is_refused_ignored_and_replaced(mem):
    algo = small_ppo(storage_path=mem, num_to_keep=2, format="msgpack")
    algo.train()
    first = algo.save().checkpoint.path
    run = first.rsplit("/", 1)[0]
    # what an upload cut off after its first files leaves: the marker and part of the files
    fs = fsspec.filesystem("memory")
    half = f"{run}/checkpoint_000002"[len("memory://") - 1:]
    fs.pipe_file(f"{half}/.amber-uploading", b"{}")
    fs.pipe_file(f"{half}/algorithm_state.msgpack", b"partial")
    with pytest.raises(NotACheckpointError, match="upload that did not finish"):
        Algorithm.from_checkpoint(f"{run}/checkpoint_000002")
    manager = amber.CheckpointManager(run)
    assert [c.iteration for c in manager.checkpoints()] == [1]
    algo.train()
    second = algo.save().checkpoint.path  # the same prefix: replaced, then committed
    assert second == f"{run}/checkpoint_000002"
    assert same_weights(Algorithm.from_checkpoint(second).get_policy(), algo.get_policy())
    assert not fs.exists(f"{half}/.amber-uploading")
    algo.stop()


def test_retention_and_learning_curves_in_storage(mem):
    algo = small_ppo(storage_path=mem, num_to_keep=2, format="msgpack")
    for _ in range(4):
        algo.train()
        algo.save()
    run = str(algo.checkpoint_root())
    assert run.startswith(mem)
    kept = amber.CheckpointManager(run).checkpoints()
    assert [c.iteration for c in kept] == [3, 4]
    with fsspec.open(f"{run}/progress.csv", "rt") as f:
        rows = f.read().splitlines()
    assert len(rows) == 5 and rows[-1].split(",")[0] == "4"
    algo.stop()


def test_other_files_at_a_url_are_never_written_over(mem):
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{mem}/data/notes.txt"[len("memory://") - 1:], b"mine")
    with pytest.raises(CheckpointWriteError, match="not an amber checkpoint"):
        amber.save({"a": 1}, f"{mem}/data")
    assert fs.cat_file(f"{mem}/data/notes.txt"[len("memory://") - 1:]) == b"mine"


def test_exports_and_serving_from_a_url(mem):
    algo = small_ppo()
    policy = algo.get_policy()
    written = policy.export_model(f"{mem}/export", onnx=17) if _has("onnx") else []
    url = f"{mem}/ck"
    algo.save(url, format="msgpack")
    from amber.serve import load_policy

    served = load_policy(url)
    obs = np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32)
    assert served.compute_single_action(obs)[0] == policy.compute_single_action(obs, explore=False)[0]
    if written:
        assert written[-1] == f"{mem}/export/model.json"
        assert load_policy(f"{mem}/export").compute_single_action(obs)[0] == served.compute_single_action(obs)[0]
    algo.stop()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_unknown_or_missing_file_systems_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingStorageError, match="nosuch://"):
        amber.save({"a": 1}, "nosuch://bucket/ck")
    if not _has("gcsfs"):
        with pytest.raises(MissingStorageError, match="gcsfs"):
            amber.load("gs://bucket/ck")
    code = ("import sys; sys.modules['s3fs'] = None\n"
            "import amber\n"
            "try:\n    amber.save({'a': 1}, 's3://bucket/ck')\n"
            "except amber.errors.MissingStorageError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "ERR s3://bucket/ck" in out.stdout and "amber-rl[s3]" in out.stdout, out.stderr
    assert list(tmp_path.iterdir()) == []  # never a local directory named "s3:"


# -- a real S3 server -------------------------------------------------------------------------

def test_s3_round_trip_and_partial_restore(s3_server):
    opts = options(s3_server.endpoint)
    bucket = make_bucket(s3_server.endpoint)
    algo = small_ppo(storage_path=f"s3://{bucket}/runs", storage_options=opts, format="pickle", num_to_keep=3)
    algo.train()
    path = algo.save().checkpoint.path
    assert path.startswith(f"s3://{bucket}/runs/") and path.endswith("checkpoint_000001")
    restored = Algorithm.from_checkpoint(path, storage_options=opts)
    assert same_weights(restored.get_policy(), algo.get_policy())
    assert verify(path, storage_options=opts).ok
    assert amber.CheckpointManager(f"s3://{bucket}/runs/{Path(algo.logdir).name}",
                                   storage_options=opts).latest().path == path
    algo.stop()
    restored.stop()


def test_files_a_user_put_in_a_checkpoint_at_a_url_are_never_deleted(s3_server):
    opts = options(s3_server.endpoint)
    bucket = make_bucket(s3_server.endpoint)
    fs = fsspec.filesystem("s3", **opts)
    manager = amber.CheckpointManager(f"s3://{bucket}/run", num_to_keep=1, storage_options=opts)
    algo = small_ppo(format="msgpack")
    saved = []
    for _ in range(4):
        algo.train()
        saved.append(manager.save(algo).checkpoint.path)
        if len(saved) == 1:
            fs.pipe_file(f"{saved[0]}/my_eval_video.txt", b"mine")
        elif len(saved) == 2:  # inside a policy: its manifest does not list it either
            fs.pipe_file(f"{saved[1]}/policies/default_policy/notes.txt", b"mine too")
    assert [c.iteration for c in manager.checkpoints()] == [1, 2, 4]  # 3 deleted; 1 and 2 left alone
    assert fs.cat_file(f"{saved[0]}/my_eval_video.txt") == b"mine"
    for path, extra in zip(saved, ["my_eval_video.txt", "policies/default_policy/notes.txt"], strict=False):
        problems = verify(path, storage_options=opts).problems  # whole: the extra file is all it reports
        assert problems == [f"{path}/{extra}: is not listed in any checkpoint.json"]
    with pytest.raises(CheckpointWriteError, match=r"checkpoint_000001 is an amber checkpoint holding files "
                       r"that its checkpoint.json does not list \('my_eval_video.txt'\); not overwriting it"):
        algo.save(saved[0], storage_options=opts)  # in place: refused as a local save refuses it
    assert get_checkpoint_info(saved[0], storage_options=opts)["metadata"]["amber.iteration"] == "1"
    with pytest.raises(CheckpointWriteError, match="policies/default_policy/notes.txt"):
        amber.save({"a": 1}, saved[1], storage_options=opts)
    algo.stop()


def _recorded(text: str) -> list[dict]:
    """The requests in moto's recording: JSON objects, one a line, but the server's threads may
    write two of them before their newlines."""
    decoder, out, at = json.JSONDecoder(), [], 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        entry, at = decoder.raw_decode(text, at)
        out.append(entry)
    return out


def test_without_num_to_keep_a_save_reads_no_other_checkpoint(tmp_path):
    """Requests counted by the S3 server itself (moto's recorder): each save's are the same
    few, and none touches an earlier checkpoint (no listing, no manifest downloaded)."""
    recording = tmp_path / "requests.jsonl"
    server = MotoServer({"MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(recording)})
    try:
        opts = options(server.endpoint)
        bucket = make_bucket(server.endpoint)
        manager = amber.CheckpointManager(f"s3://{bucket}/run", storage_options=opts)
        algo = small_ppo(format="msgpack")
        counts = []
        for i in range(1, 5):
            algo.train()
            recording.write_text("")
            manager.save(algo)
            urls = [entry["url"] for entry in _recorded(recording.read_text())]
            assert not [u for u in urls if any(f"checkpoint_{j:06d}" in u for j in range(1, i))], urls
            counts.append(len(urls))
        assert len(set(counts)) == 1, counts
        assert [c.iteration for c in manager.checkpoints()] == [1, 2, 3, 4]
        algo.stop()
    finally:
        server.kill()


def test_a_connection_cut_mid_upload_leaves_the_previous_checkpoint(s3_server):
    proxy = CuttableProxy(s3_server.port)
    opts = options(proxy.endpoint)
    bucket = make_bucket(s3_server.endpoint)
    root = f"s3://{bucket}/run"
    manager = amber.CheckpointManager(root, num_to_keep=1, storage_options=opts)
    algo = (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size=128, minibatch_size=64, num_epochs=1, model={"fcnet_hiddens": [512, 512]})
            .debugging(seed=5).build())
    algo.train()
    first = manager.save(algo, format="msgpack").checkpoint.path
    before = algo.get_policy().get_weights()
    algo.train()
    proxy.budget = 1_000_000  # about a third of the checkpoint's bytes, then the line goes dead
    with pytest.raises(CheckpointWriteError) as e:
        manager.save(algo, format="msgpack")
    assert f"{root}/checkpoint_000002" in str(e.value)
    proxy.heal()
    assert [c.path for c in manager.checkpoints()] == [first]  # retention deleted nothing
    restored = Algorithm.from_checkpoint(first, storage_options=opts)
    w = restored.get_policy().get_weights()
    assert all(np.array_equal(w[k], before[k]) for k in before)
    with pytest.raises(NotACheckpointError, match="did not finish"):
        Algorithm.from_checkpoint(f"{root}/checkpoint_000002", storage_options=opts)
    second = manager.save(algo, format="msgpack").checkpoint.path  # a retry commits; the first goes
    assert [c.path for c in manager.checkpoints()] == [second]
    algo.stop()
    restored.stop()


def test_a_server_killed_mid_upload_fails_the_save_cleanly():
    import tempfile

    server = MotoServer()
    try:
        opts = options(server.endpoint)
        bucket = make_bucket(server.endpoint)
        url = f"s3://{bucket}/big"
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")

        def kill_when_uploading() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                listed = client.list_objects_v2(Bucket=bucket, Prefix="big/").get("Contents", [])
                if any(o["Key"].endswith(".amber-uploading") for o in listed):
                    server.kill()
                    return
                time.sleep(0.005)

        staged_before = set(Path(tempfile.gettempdir()).glob("amber-upload-*"))
        killer = threading.Thread(target=kill_when_uploading, daemon=True)
        killer.start()
        state = {"w": np.random.default_rng(0).random(48_000_000 // 8)}
        t0 = time.monotonic()
        with pytest.raises(CheckpointWriteError) as e:
            amber.save(state, url, format="msgpack", storage_options=opts)
        killer.join()
        assert url in str(e.value) and "not committed" in str(e.value)
        assert time.monotonic() - t0 < 120  # failed, never hung
        assert set(Path(tempfile.gettempdir()).glob("amber-upload-*")) == staged_before
        server.start()  # a fresh, empty server on the same port: the same client works again
        client.create_bucket(Bucket=bucket)
        amber.save({"w": np.ones(3)}, url, format="msgpack", storage_options=opts)
        assert amber.load(url, storage_options=opts)["w"].tolist() == [1.0, 1.0, 1.0]
    finally:
        server.kill()


def test_the_cli_at_s3_urls_with_fsspec_configuration(s3_server, tmp_path):
    bucket = make_bucket(s3_server.endpoint)
    env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": s3_server.endpoint, "FSSPEC_S3_KEY": "testing",
           "FSSPEC_S3_SECRET": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AMBER_RESULTS_DIR": str(tmp_path)}

    def amber_cli(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "amber", *args], capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    train = ["train", "--algo", "PPO", "--env", "CartPole-v1", "-o", "train_batch_size=128",
             "-o", "minibatch_size=64", "-o", "num_epochs=1", "--seed", "0", "--format", "msgpack",
             "--checkpoint-dir", str(tmp_path / "run1"), "--storage", f"s3://{bucket}/runs"]
    first = amber_cli(*train, "--stop-iters", "2").stdout.strip().splitlines()[-1]
    run = f"s3://{bucket}/runs/run1"
    assert first == f"{run}/checkpoint_000002"
    info = json.loads(amber_cli("inspect", first, "--json").stdout)
    assert info["type"] == "Algorithm" and info["checkpoint_dir"] == first
    assert "ok:" in amber_cli("verify", first).stdout
    amber_cli("convert", first, f"s3://{bucket}/converted", "--format", "pickle")
    amber_cli("export", first, f"s3://{bucket}/export")
    resumed = amber_cli("train", "--resume", run, "--stop-iters", "3", "--checkpoint-dir",
                        str(tmp_path / "elsewhere")).stdout.strip().splitlines()[-1]
    assert resumed == f"{run}/checkpoint_000003"
    fs = fsspec.filesystem("s3", endpoint_url=s3_server.endpoint, key="testing", secret="testing")
    rows = fs.cat_file(f"{bucket}/runs/run1/progress.csv").decode().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]  # the curve continues
    assert fs.exists(f"{bucket}/export/model.json") and fs.exists(f"{bucket}/converted/checkpoint.json")
    if _has("matplotlib"):
        image = amber_cli("plot", run, "-o", str(tmp_path / "curve.png")).stdout.strip()
        assert Path(image).stat().st_size > 1000


def test_trusting_a_pickle_checkpoint_at_a_url(mem, tmp_path, monkeypatch):
    from amber.errors import UnsafeContentError
    from amber.trust import trust_checkpoint, trust_state

    url = f"{mem}/theirs"
    monkeypatch.setenv("AMBER_KEY_FILE", str(tmp_path / "their.key"))
    amber.save({"w": np.ones(3)}, url, format="pickle")
    monkeypatch.setenv("AMBER_KEY_FILE", str(tmp_path / "my.key"))  # another user reads it
    with pytest.raises(UnsafeContentError, match=url):
        amber.load(url)
    assert trust_state(url).problem is not None
    result = trust_checkpoint(url)
    assert result.changed and result.path == url
    assert amber.load(url)["w"].tolist() == [1.0, 1.0, 1.0]  # signed with my key, in storage


def test_train_with_storage_names_the_run_after_its_directory_given_as_a_dot(mem, tmp_path, monkeypatch):
    """`--checkpoint-dir .` (or `..`) names the run after the directory, not after the dots (which
    put the checkpoints at the storage's root, or above it)."""
    from click.testing import CliRunner

    from amber.cli import cli

    (tmp_path / "myrun").mkdir()
    monkeypatch.chdir(tmp_path / "myrun")
    result = CliRunner().invoke(cli, ["train", "--algo", "PPO", "--env", "CartPole-v1", "-o", "train_batch_size=64",
                                      "-o", "minibatch_size=32", "-o", "num_epochs=1", "--format", "msgpack",
                                      "--stop-iters", "1", "--checkpoint-dir", ".", "--storage", f"{mem}/runs"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{mem}/runs/myrun/checkpoint_000001"
    assert get_checkpoint_info(f"{mem}/runs/myrun/checkpoint_000001")["type"] == "Algorithm"
