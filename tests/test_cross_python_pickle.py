"""A pickle checkpoint read by another Python version than the one that wrote it.

cloudpickle stores a lambda, a local function or a function of ``__main__``
by value, as bytecode, which only the Python version (major.minor) that
compiled it runs: read by another, such a pickle loaded without error and
then crashed the interpreter when called (3.11 <-> 3.12), ran the wrong code
(3.11 -> 3.13) or failed as a "damaged" file (3.10 <-> 3.11). It is now an
:class:`~amber.errors.IncompatibleCodeError` naming both Pythons, raised
before anything is unpickled. The writer is faked here by the Python version
recorded in checkpoint.json (what the reader goes by); the streams are the
same cloudpickle writes under any version.
"""

from __future__ import annotations

import math
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber.errors import CorruptCheckpointError, IncompatibleCodeError
from amber.plugins import pickle_fmt
from amber.state_read import other_python

HERE = platform.python_version()
MAJOR, MINOR = sys.version_info[:2]
#: Pythons that are not this one (another minor version, before and after).
OTHERS = [f"{MAJOR}.{MINOR - 1}.4", f"{MAJOR}.{MINOR + 1}.0"]

UNPICKLED: list[str] = []


class Tracked:
    """Records every unpickling (to show that a refused file was not unpickled at all)."""

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict) -> None:
        UNPICKLED.append("Tracked")
        self.__dict__.update(state)


class Fragile:
    """An object whose unpickling fails, as one of another Python's internals may."""

    def __init__(self) -> None:
        self.value = 1

    def __setstate__(self, state: dict) -> None:
        raise TypeError("code expected at most 16 arguments, got 18")


def _closure(offset: int):
    def add(x):
        return x + offset

    return add


def _registered(x: int) -> int:
    return x - 1


class _Local:
    def method(self) -> int:
        return 7


def _by_value() -> dict:
    class ByValue:  # a local class: pickled by value, with its method's bytecode
        def twice(self, x):
            return 2 * x

    return {"lambda": lambda agent_id, *a, **kw: "p0" if agent_id == 0 else "p1", "closure": _closure(1),
            "class": ByValue}


def _save(state, path: Path, python: str, pm, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``state`` saved in pickle as if by Python ``python`` (the version checkpoint.json records)."""
    with monkeypatch.context() as m:
        m.setattr(platform, "python_version", lambda: python)
        amber.save(state, path, format="pickle", pm=pm)
    return path


@pytest.mark.parametrize("kind", ["lambda", "closure", "class"])
@pytest.mark.parametrize("writer", OTHERS)
def test_code_pickled_by_another_python_is_refused_before_unpickling(tmp_path, bare_pm, monkeypatch,
                                                                       writer, kind):
    """It loaded without error, then segfaulted or ran wrong bytecode when called."""
    UNPICKLED.clear()
    path = _save({"first": Tracked(), kind: _by_value()[kind]}, tmp_path / "ck", writer, bare_pm, monkeypatch)
    with pytest.raises(IncompatibleCodeError) as e:
        amber.load(path, allow_pickle=True, pm=bare_pm)
    assert UNPICKLED == []  # refused before anything was unpickled
    error = e.value
    assert not isinstance(error, CorruptCheckpointError)
    assert error.path == str(path / "state.pkl") and error.format == "pickle"
    message = str(error)
    assert f"{path / 'state.pkl'} holds Python bytecode" in message
    assert f"written by amber {amber.__version__} on Python {writer}" in message
    assert f"this is amber {amber.__version__} on Python {HERE}" in message
    assert f"Load it with Python {writer.rsplit('.', 1)[0]}" in message
    assert "amber convert" in message and "msgpack" in message and "amber.register_class" in message
    assert "intact" in message and "corrupt" not in message.lower()


def test_another_patch_release_of_the_same_python_loads_the_code(tmp_path, bare_pm, monkeypatch):
    path = _save(_by_value(), tmp_path / "ck", f"{MAJOR}.{MINOR}.99", bare_pm, monkeypatch)
    state = amber.load(path, allow_pickle=True, pm=bare_pm)
    assert state["lambda"](0) == "p0" and state["closure"](1) == 2 and state["class"]().twice(3) == 6


def test_a_pickle_without_code_written_by_another_python_loads(tmp_path, bare_pm, monkeypatch):
    """Plain objects (arrays, importable classes and functions by name, registered functions) carry
    no bytecode: another Python reads them as before."""
    amber.register_class(_registered, name="user:test_cross_python_registered")
    UNPICKLED.clear()
    state = {"w": np.arange(6.0).reshape(2, 3), "obj": Tracked(), "local": _Local(), "fn": math.sqrt,
             "registered": _registered, "text": "CodeType", "t": ("_builtin_type", "CodeType")}
    path = _save(state, tmp_path / "ck", OTHERS[0], bare_pm, monkeypatch)
    loaded = amber.load(path, allow_pickle=True, pm=bare_pm)
    assert UNPICKLED == ["Tracked"]
    np.testing.assert_array_equal(loaded["w"], state["w"])
    assert loaded["local"].method() == 7 and loaded["fn"] is math.sqrt and loaded["registered"].resolve()(3) == 2
    assert loaded["t"] == ("_builtin_type", "CodeType")


def test_the_stream_is_not_scanned_when_the_versions_match(tmp_path, bare_pm, monkeypatch):
    """The scan costs nothing in the common case: a file this Python wrote is never scanned."""
    path = amber.save(_by_value(), tmp_path / "ck", format="pickle", pm=bare_pm)

    def no_scan(stream):
        raise AssertionError("scanned")

    monkeypatch.setattr(pickle_fmt, "_code_in", no_scan)
    assert amber.load(path, allow_pickle=True, pm=bare_pm)["closure"](2) == 3


def test_a_source_that_records_no_writer_reads_as_before(bare_pm, tmp_path, monkeypatch):
    """A StateSource made by other code (no ``python_version``) is read without a scan."""
    path = _save(_by_value(), tmp_path / "ck", OTHERS[1], bare_pm, monkeypatch)

    class BytesSource:
        def __init__(self, data: bytes) -> None:
            self.path, self.data = path / "state.pkl", data

        def has(self, suffix: str = "") -> bool:
            return suffix == ""

        def read(self, suffix: str = "") -> memoryview:
            return memoryview(bytearray(self.data))

    state = pickle_fmt.read(BytesSource((path / "state.pkl").read_bytes()))
    assert state["lambda"](1) == "p1"


def test_the_engine_source_carries_the_writer_versions(tmp_path, bare_pm, monkeypatch):
    """The pickle plugin reads the writer's versions from the engine's StateSource, not from
    checkpoint.json itself."""
    from amber.layout import read_manifest
    from amber.verified_io import Source

    path = _save({"x": 1}, tmp_path / "ck", "3.9.1", bare_pm, monkeypatch)
    source = Source(read_manifest(path), "state", ".pkl")
    assert (source.python_version, source.amber_version) == ("3.9.1", amber.__version__)


@pytest.mark.parametrize(("written", "other"), [
    (f"{MAJOR}.{MINOR}.1", None), (f"{MAJOR}.{MINOR}", None), (f"{MAJOR}.{MINOR}.0rc1", None),
    (f"{MAJOR}.{MINOR + 1}.0", f"{MAJOR}.{MINOR + 1}"), (f"{MAJOR}.{MINOR}0.1", f"{MAJOR}.{MINOR}0"),
    (None, None), ("", None), ("unknown", None), (3.11, None)])
def test_other_python_compares_major_and_minor(written, other):
    assert other_python(written) == other


def test_an_unpickling_failure_of_another_pythons_file_is_incompatible_not_damage(tmp_path, bare_pm,
                                                                                  monkeypatch):
    """3.10 reading 3.11's lambda said "cannot be read as 'pickle': TypeError: code expected at most
    16 arguments", a CorruptCheckpointError, while `amber verify` found every file intact."""
    path = _save({"obj": Fragile()}, tmp_path / "ck", OTHERS[0], bare_pm, monkeypatch)
    with pytest.raises(IncompatibleCodeError) as e:
        amber.load(path, allow_pickle=True, pm=bare_pm)
    message = str(e.value)
    assert not isinstance(e.value, CorruptCheckpointError) and e.value.path == str(path / "state.pkl")
    assert f"written by amber {amber.__version__} on Python {OTHERS[0]}" in message
    assert f"this amber {amber.__version__} on Python {HERE} cannot read it" in message
    assert "TypeError: code expected at most 16 arguments" in message
    assert "intact" in message and f"load it with Python {OTHERS[0].rsplit('.', 1)[0]}" in message
    # written by this Python, the same failure is the file's: as before
    same = amber.save({"obj": Fragile()}, tmp_path / "same", format="pickle", pm=bare_pm)
    with pytest.raises(CorruptCheckpointError, match="cannot be read as 'pickle': TypeError"):
        amber.load(same, allow_pickle=True, pm=bare_pm)


@pytest.fixture(scope="module")
def multi_agent_lambda(tmp_path_factory) -> Path:
    """docs/environments.md's multi-agent PPO with a lambda mapping function, saved in the default
    format (pickle) as if by another Python."""
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    config = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
              .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda agent, *a, **kw: f"p{agent}")
              .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]}))
    algo = config.build()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(platform, "python_version", lambda: OTHERS[1])
        path = algo.save(tmp_path_factory.mktemp("ma") / "ck").checkpoint.path
    algo.stop()
    return Path(path)


def test_a_multi_agent_algorithm_with_a_lambda_mapping_is_refused(multi_agent_lambda):
    from amber.algorithms.algorithm import Algorithm

    with pytest.raises(IncompatibleCodeError, match=f"written by amber .* on Python {OTHERS[1]}"):
        Algorithm.from_checkpoint(multi_agent_lambda, allow_pickle=True)


def test_amber_convert_says_so_in_one_line(multi_agent_lambda, tmp_path):
    from amber.cli import cli

    result = CliRunner().invoke(cli, ["convert", str(multi_agent_lambda), str(tmp_path / "out"),
                                       "--format", "msgpack", "--trust"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amber: error: ")
    assert "holds Python bytecode" in lines[0] and f"Python {OTHERS[1]}" in lines[0]
    assert not (tmp_path / "out").exists()


_MEMO_FIRST = {  # states whose strs a code object's globals reuse were pickled before it (read back from the memo)
    "key first": lambda fn: {"CodeType": 1, "f": fn},
    "value first": lambda fn: {"note": "CodeType", "mapping": fn},
    "names first": lambda fn: {"names": ["cloudpickle.cloudpickle", "_builtin_type", "_make_function",
                                         "_function_setstate", "CodeType"], "f": fn},
    "code after": lambda fn: {"f": fn, "CodeType": "CodeType"},
    "bare code": lambda fn: {"CodeType": 1, "code": fn.__code__},
}


@pytest.mark.parametrize("order", sorted(_MEMO_FIRST))
def test_code_is_found_when_its_names_come_from_the_memo(tmp_path, bare_pm, monkeypatch, order):
    """{"CodeType": 1, "f": lambda} loaded and ran the foreign bytecode: the scan compared only the
    strs a stream pushed, not those it read back from the memo."""
    path = _save(_MEMO_FIRST[order](lambda x: x + 1), tmp_path / "ck", OTHERS[0], bare_pm, monkeypatch)
    with pytest.raises(IncompatibleCodeError, match="holds Python bytecode"):
        amber.load(path, allow_pickle=True, pm=bare_pm)


def test_a_types_member_pickled_by_cloudpickle_is_not_code(tmp_path, bare_pm, monkeypatch):
    """cloudpickle names a class of ``types`` (a SimpleNamespace's) by _builtin_type: no bytecode."""
    import types

    state = {"CodeType": "CodeType", "ns": types.SimpleNamespace(x=1), "cls": types.SimpleNamespace}
    path = _save(state, tmp_path / "ck", OTHERS[0], bare_pm, monkeypatch)
    loaded = amber.load(path, allow_pickle=True, pm=bare_pm)
    assert loaded["ns"].x == 1 and loaded["cls"] is types.SimpleNamespace
