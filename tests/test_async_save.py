"""Background saves (``block=False``): the snapshot, ordering, waiting, errors, exit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import amber
import amber.checkpoint as checkpoint_module
from amber.algorithms.algorithm import Algorithm, AlgorithmStoppedError
from amber.algorithms.dqn import DQNConfig
from amber.algorithms.ppo import PPOConfig
from amber.async_save import SaveHandle, snapshot, wait_for_saves
from amber.errors import CheckpointWriteError, UnknownFormatError, UnserializableStateError
from amber.layout import MANIFEST
from amber.utils.checkpoints import verify

FORMATS = ["pickle", "msgpack"]
#: Manifest fields that differ between two saves of the same state: when, and what covers them.
TIME_FIELDS = ("created", "signature", "manifest_digest")


def small_ppo(**checkpointing):
    return (PPOConfig().environment("CartPole-v1")
            .training(train_batch_size=256, minibatch_size=64, num_epochs=1, model={"fcnet_hiddens": [32, 32]})
            .checkpointing(**checkpointing).debugging(seed=0))


def policy_arrays(algo):
    """Every array of every policy's state (weights, optimizer, generators), by key path."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
        elif isinstance(node, np.ndarray):
            out[path] = node.copy()

    for pid, policy in algo.policies.items():
        walk(policy.get_state(), pid)
    return out


def assert_same_arrays(got, want):
    assert got.keys() == want.keys()
    for key in want:
        assert np.array_equal(got[key], want[key]), key


def comparable_manifest(path: Path) -> dict:
    """A manifest without what differs between two saves at other times (manifests' own digests)."""
    content = json.loads(path.read_text())
    for name in TIME_FIELDS:
        content.pop(name, None)
    for rel, entry in content.get("files", {}).items():
        if rel.endswith(MANIFEST):
            entry.pop("digest")
    return content


def assert_same_checkpoint_files(a: str | Path, b: str | Path) -> None:
    """Every state file byte for byte, every manifest but for its time fields."""
    a, b = Path(a), Path(b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert any(p.name != MANIFEST for p in files_a)
    for rel in files_a:
        if rel.name == MANIFEST:
            assert comparable_manifest(a / rel) == comparable_manifest(b / rel), rel
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


class Gate:
    """Stands in for ``write_checkpoint``: holds every write until opened, records the order and
    how many ran at once."""

    def __init__(self, real):
        self.real = real
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.paths: list[Path] = []
        self.lock = threading.Lock()
        self.active = self.max_active = 0

    def __call__(self, path, **kwargs):
        self.paths.append(Path(path))
        self.entered.set()
        assert self.opened.wait(60), "the test never opened the gate"
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self.real(path, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(autouse=True)
def _settled():
    """No test leaves a save running, or an error for the next test's save to raise."""
    yield
    try:
        wait_for_saves()
    except Exception:  # noqa: BLE001 - a test that expected its failure already checked it
        pass


@pytest.fixture
def gate(monkeypatch):
    """Background writes wait until ``gate.opened.set()`` (opened anyway when the test ends)."""
    g = Gate(checkpoint_module.write_checkpoint)
    monkeypatch.setattr(checkpoint_module, "write_checkpoint", g)
    yield g
    g.opened.set()


def in_thread(fn, *args, **kwargs):
    """Start ``fn`` in a thread; the thread's ``out`` holds its result or error."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)  # a hang fails the test, not the session
    thread.out = out
    thread.start()
    return thread


# -- the handle and the snapshot ----------------------------------------------------------------


def test_amber_save_returns_a_handle_whose_result_is_the_path(tmp_path):
    handle = amber.save({"w": np.arange(4.0), "step": 7}, tmp_path / "ckpt", block=False)
    assert isinstance(handle, SaveHandle) and handle.path == tmp_path / "ckpt"
    assert handle.result(timeout=60) == tmp_path / "ckpt"
    assert handle.done() and handle.wait() and not handle.cancel()
    assert amber.load(tmp_path / "ckpt")["step"] == 7


def tree_of_every_kind():
    shared = {"s": np.arange(3, dtype=np.int16)}
    return {
        "c": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "be": np.arange(5, dtype=">i4"),
        "view": np.arange(20.0)[2:10],
        "scalar": np.float64(-0.0), "n": 3, "x": float("nan"), "t": "text", "b": b"\x00\x01", "none": None,
        "nested": [1, [2.5, {"k": np.zeros((0, 2))}]],
        "shared_a": shared, "shared_b": shared,
        0: "an int key",
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_background_state_save_is_byte_identical_to_a_synchronous_one(tmp_path, fmt):
    tree = tree_of_every_kind()
    amber.save(tree, tmp_path / "sync", format=fmt)
    amber.save(tree, tmp_path / "async", format=fmt, block=False).result(timeout=60)
    assert_same_checkpoint_files(tmp_path / "sync", tmp_path / "async")


def test_changing_the_tree_after_save_does_not_change_what_is_written(tmp_path, gate):
    tree = {"w": np.arange(6.0), "rows": [np.ones(3)], "meta": {"step": 1}}
    handle = amber.save(tree, tmp_path / "ckpt", format="msgpack", block=False)
    tree["w"][:] = -1.0  # in place, before the write has begun
    tree["rows"][0] += 5
    tree["rows"].append(np.zeros(2))
    tree["meta"]["step"] = 2
    gate.opened.set()
    handle.result(timeout=60)
    loaded = amber.load(tmp_path / "ckpt")
    assert np.array_equal(loaded["w"], np.arange(6.0)) and len(loaded["rows"]) == 1
    assert np.array_equal(loaded["rows"][0], np.ones(3)) and loaded["meta"] == {"step": 1}


def test_snapshot_copies_once_and_keeps_sharing_and_layout():
    fresh, live = np.ones(4), np.arange(10.0)
    tree = {"fresh": fresh, "view": live[2:6], "f": np.asfortranarray(np.ones((2, 3))), "a": [fresh], "l": [1]}
    tree["again"] = tree["l"]
    copied = snapshot(tree, fresh_arrays=True)
    assert copied["fresh"] is fresh and copied["a"][0] is fresh  # a copy made for the save: kept
    assert not np.shares_memory(copied["view"], live)  # a view of live memory: copied
    assert copied["f"].flags.f_contiguous and copied["again"] is copied["l"] is not tree["l"]
    everything = snapshot(tree)
    assert not np.shares_memory(everything["fresh"], fresh)
    assert everything["fresh"] is everything["a"][0]


def test_an_unknown_format_or_an_uncopyable_state_fails_at_once(tmp_path):
    with pytest.raises(UnknownFormatError):
        amber.save({"w": 1}, tmp_path / "a", format="nope", block=False)
    with pytest.raises(UnserializableStateError, match="block=True"):
        amber.save({"lock": threading.Lock()}, tmp_path / "b", format="pickle", block=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_background_save_of_a_state_containing_itself_is_a_synchronous_ones_result(tmp_path):
    loop: list = [np.arange(3)]
    loop += [loop, loop]  # a list containing itself twice
    state = {"w": np.ones(2), "loop": loop}
    state["me"] = state
    got = amber.load(amber.save(state, tmp_path / "p", format="pickle", block=False).result(timeout=60))
    assert got["me"] is got and got["loop"][1] is got["loop"][2] is got["loop"]  # pickle keeps cycles
    assert np.array_equal(got["loop"][0], np.arange(3)) and np.array_equal(got["w"], np.ones(2))
    handle = amber.save(state, tmp_path / "m", format="msgpack", block=False)
    with pytest.raises(UnserializableStateError, match="contains itself") as background:
        handle.result(timeout=60)
    with pytest.raises(UnserializableStateError, match="contains itself") as synchronous:
        amber.save(state, tmp_path / "m", format="msgpack")
    assert str(background.value) == str(synchronous.value) and not (tmp_path / "m").exists()


# -- algorithms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_background_algorithm_save_is_byte_identical_to_a_synchronous_one(tmp_path, fmt):
    algo = small_ppo().build()
    algo.train()
    sync = algo.save(tmp_path / "sync", format=fmt)
    result = algo.save(tmp_path / "async", format=fmt, block=False).result(timeout=60)
    assert result.checkpoint.path == str(tmp_path / "async") and result.metrics == sync.metrics
    assert_same_checkpoint_files(sync.checkpoint.path, result.checkpoint.path)
    algo.stop()


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_right_after_save_does_not_change_what_is_saved(tmp_path, gate, fmt):
    algo = small_ppo().build()
    algo.train()
    want, iteration = policy_arrays(algo), algo.iteration
    handle = algo.save(tmp_path / "ckpt", format=fmt, block=False)
    algo.train()  # the write has not begun: it waits at the gate
    assert not handle.done() and algo.iteration == iteration + 1
    gate.opened.set()
    assert handle.result(timeout=60).metrics["training_iteration"] == iteration
    restored = Algorithm.from_checkpoint(tmp_path / "ckpt")
    assert restored.iteration == iteration
    assert_same_arrays(policy_arrays(restored), want)
    assert not all(np.array_equal(a, want[k]) for k, a in policy_arrays(algo).items())  # it did train
    restored.stop()
    algo.stop()


def test_training_while_the_save_is_written_trains_exactly_as_without(tmp_path):
    """No gate: the write (a model export included) runs while training goes on. Training is that
    of an algorithm that never saved, and the checkpoint holds the state at save time."""
    saving, plain = (small_ppo(export_native_model_files=True).build() for _ in range(2))
    want = policy_arrays(saving)
    handle = saving.save(tmp_path / "ckpt", block=False)
    for algo in (saving, plain):
        algo.train()
        algo.train()
    handle.result(timeout=120)
    assert_same_arrays(policy_arrays(saving), policy_arrays(plain))
    restored = Algorithm.from_checkpoint(tmp_path / "ckpt")
    assert_same_arrays(policy_arrays(restored), want)
    for algo in (saving, plain, restored):
        algo.stop()


def test_replay_buffer_rows_are_those_at_save_time(tmp_path, gate):
    """The buffer's state holds views of its storage: the snapshot copies them; training after
    the save overwrites those rows in place (the buffer is full)."""
    algo = (DQNConfig().environment("CartPole-v1")
            .training(model={"fcnet_hiddens": [16]}, num_steps_sampled_before_learning_starts=50,
                      replay_buffer_config={"capacity": 100})
            .reporting(min_sample_timesteps_per_iteration=100)
            .checkpointing(store_replay_buffer=True).debugging(seed=0).build())
    algo.train()
    want = {k: v.copy() for k, v in algo.replay_buffers["default_policy"].get_state()["columns"].items()}
    handle = algo.save(tmp_path / "ckpt", format="msgpack", block=False)
    algo.train()
    assert not np.array_equal(algo.replay_buffers["default_policy"].get_state()["columns"]["obs"], want["obs"])
    gate.opened.set()
    handle.result(timeout=60)
    restored = Algorithm.from_checkpoint(tmp_path / "ckpt")
    got = restored.replay_buffers["default_policy"].get_state()["columns"]
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    restored.stop()
    algo.stop()


@pytest.mark.parametrize("own_export", [False, True], ids=["export_graph", "own_export_model"])
def test_exported_model_files_are_of_the_weights_at_save_time(tmp_path, gate, monkeypatch, own_export):
    """The network is taken at the save (exported later from that copy); a policy class with an
    ``export_model`` of its own exports at the save, in the caller's thread."""
    from amber.export import weights_digest
    from amber.policy.policy import Policy

    algo = small_ppo(export_native_model_files=True).build()
    exported_in_main = []
    if own_export:
        def export_model(self, export_dir, onnx=None, **kwargs):
            exported_in_main.append(threading.current_thread() is threading.main_thread())
            return Policy.export_model(self, export_dir, onnx, **kwargs)

        monkeypatch.setattr(type(algo.get_policy()), "export_model", export_model)
    digest = weights_digest(algo.get_policy().export_graph())
    handle = algo.save(tmp_path / "ckpt", block=False)
    algo.train()
    gate.opened.set()
    path = Path(handle.result(timeout=120).checkpoint.path)
    assert exported_in_main == ([True] if own_export else [])
    model = json.loads((path / "policies" / "default_policy" / "model" / "model.json").read_text())
    assert model["weights_digest"] == digest != weights_digest(algo.get_policy().export_graph())
    assert verify(path).ok
    algo.stop()


# -- one at a time, waiting, errors ------------------------------------------------------------


@pytest.mark.parametrize("block", [False, True])
def test_the_next_save_waits_for_the_one_in_flight(tmp_path, gate, block):
    first = amber.save({"w": np.zeros(3)}, tmp_path / "first", block=False)
    assert gate.entered.wait(60)
    second = in_thread(amber.save, {"w": np.ones(3)}, tmp_path / "second", block=block)
    second.join(0.5)
    assert second.is_alive() and gate.paths == [tmp_path / "first"]  # not begun: waiting
    gate.opened.set()
    second.join(60)
    assert first.result(timeout=60) == tmp_path / "first" and "error" not in second.out
    if not block:
        second.out["result"].result(timeout=60)
    assert gate.paths == [tmp_path / "first", tmp_path / "second"] and gate.max_active == 1


def test_a_save_started_by_a_background_write_is_written_at_once(tmp_path, monkeypatch):
    """Code a background save runs may save too: it never waits for itself, even while another
    thread waits for that background save."""
    real, inner = checkpoint_module.write_checkpoint, {}

    def writing(path, **kwargs):
        if Path(path).name == "outer":
            inner["sync"] = amber.save({"w": 1}, tmp_path / "inner_sync")
            inner["async"] = amber.save({"w": 2}, tmp_path / "inner_async", block=False).result(timeout=60)
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "write_checkpoint", writing)
    outer = amber.save({"w": 0}, tmp_path / "outer", block=False)
    waiting = in_thread(amber.save, {"w": 3}, tmp_path / "next")
    waiting.join(60)
    assert not waiting.is_alive() and waiting.out == {"result": tmp_path / "next"}
    assert outer.result(timeout=60) == tmp_path / "outer"
    assert inner == {"sync": tmp_path / "inner_sync", "async": tmp_path / "inner_async"}


def test_stop_waits_for_the_save_in_flight(tmp_path, gate):
    algo = small_ppo().build()
    handle = algo.save(tmp_path / "ckpt", block=False)
    assert gate.entered.wait(60)
    stopping = in_thread(algo.stop)
    stopping.join(0.5)
    assert stopping.is_alive() and not handle.done()
    gate.opened.set()
    stopping.join(60)
    assert handle.done() and "error" not in stopping.out and verify(tmp_path / "ckpt").ok


def test_an_error_is_raised_from_result_naming_the_path(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    handle = amber.save({"w": 1}, tmp_path / "file" / "ckpt", block=False)
    with pytest.raises(CheckpointWriteError, match="file/ckpt"):
        handle.result(timeout=60)
    amber.save({"w": 1}, tmp_path / "ok", block=False).result(timeout=60)  # retrieved: not raised again


def test_an_algorithm_save_onto_something_else_fails_in_result_and_leaves_it(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    algo = small_ppo().build()
    handle = algo.save(tmp_path / "mine", block=False)
    assert isinstance(handle.exception(timeout=60), CheckpointWriteError)
    assert "not overwriting" in str(handle.exception()) and str(tmp_path / "mine") in str(handle.exception())
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    algo.stop()  # the error was retrieved: stop does not raise it


@pytest.mark.parametrize("block", [False, True])
def test_an_unretrieved_error_is_raised_by_the_next_save_once(tmp_path, block):
    (tmp_path / "file").write_text("")
    failed = amber.save({"w": 1}, tmp_path / "file" / "ckpt", block=False)
    failed.wait(60)
    with pytest.raises(CheckpointWriteError, match="file/ckpt"):
        amber.save({"w": 2}, tmp_path / "next", block=block)
    assert not (tmp_path / "next").exists()  # the save that raised it did not start
    done = amber.save({"w": 2}, tmp_path / "next", block=block)
    assert (done if block else done.result(timeout=60)) == tmp_path / "next"


def test_an_unretrieved_error_is_raised_by_stop_which_stops_all_the_same(tmp_path):
    (tmp_path / "file").write_text("")
    algo = small_ppo().build()
    algo.save(tmp_path / "file" / "ckpt", block=False)
    with pytest.raises(CheckpointWriteError, match="file/ckpt"):
        algo.stop()
    with pytest.raises(AlgorithmStoppedError):
        algo.train()


# -- interpreter exit ---------------------------------------------------------------------------

EXIT_SCRIPT = """
import sys, time
import numpy as np
import amber, amber.checkpoint

real = amber.checkpoint.write_checkpoint
def slow(*args, **kwargs):  # the interpreter would be gone long before this write
    time.sleep(1.0)
    return real(*args, **kwargs)
amber.checkpoint.write_checkpoint = slow
handle = amber.save({{"w": np.arange(1000.0), "step": 3}}, sys.argv[1], format={fmt!r}, block=False)
print("in flight at exit:", not handle.done())
"""


@pytest.mark.parametrize("fmt", FORMATS)
def test_interpreter_exit_waits_for_the_save(tmp_path, fmt):
    target = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT.format(fmt=fmt)), str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "in flight at exit: True" in proc.stdout and "warning" not in proc.stderr
    assert verify(target).ok
    loaded = amber.load(target)
    assert loaded["step"] == 3 and np.array_equal(loaded["w"], np.arange(1000.0))


def test_an_error_nobody_retrieved_is_printed_at_exit(tmp_path):
    (tmp_path / "file").write_text("")
    script = "import sys, amber; amber.save({'w': 1}, sys.argv[1], block=False)"
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "file" / "ckpt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "amber: warning: the background save to" in proc.stderr and "CheckpointWriteError" in proc.stderr
    assert str(tmp_path / "file" / "ckpt") in proc.stderr
