"""A real third-party format, installed with pip and found through its entry point.

``tests/plugins/amber_npz`` is a separate distribution (``amber-npz``) that
declares ``[project.entry-points.amber] npz = "amber_npz"``. A session fixture
pip-installs it, offline, into a temporary directory; each test that wants
it puts that directory on ``sys.path`` only for its own duration, so no other
test module sees the plugin.
"""

from __future__ import annotations

import base64
import builtins
import collections
import importlib.metadata
import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import pytest
from hypothesis import given, settings

import amber
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import (
    CorruptCheckpointError,
    DuplicateFormatError,
    MissingPluginError,
    PluginLoadError,
    UnserializableStateError,
)
from amber.plugin_manager import get_plugin_manager
from amber.registry import Capabilities, FormatSpec, build_registry, get_registry
from amber.state import Ref
from amber.utils.checkpoints import convert_checkpoint, get_checkpoint_info, verify

from . import treeutil
from .plugins import install
from .plugins.install import on_sys_path

PLUGIN_ENV = ("AMBER_DISABLE_PLUGIN_AUTOLOAD", "AMBER_PLUGINS")
CANARY = "_amber_npz_test_pickle_ran"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def npz_installed(npz_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``amber-npz`` importable and its entry point visible, for one test."""
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    with on_sys_path(npz_site) as site:
        yield site


@pytest.fixture
def npz_pm(npz_installed: Path) -> pluggy.PluginManager:
    """A fresh plugin manager, autoload on, with ``amber-npz`` installed."""
    return get_plugin_manager()


@pytest.fixture
def npz_spec(npz_pm: pluggy.PluginManager) -> FormatSpec:
    """The ``npz`` format as registered by the installed plugin."""
    return get_registry(npz_pm).get("npz")


@pytest.fixture
def no_canary() -> Iterator[None]:
    """Fail if anything unpickled our canary payload during the test."""
    yield
    assert not hasattr(builtins, CANARY), "npz reading ran code from a pickle"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


class BytesSink:
    """A :class:`amber.registry.StateSink` that keeps the main file in memory."""

    def __init__(self) -> None:
        self.path = Path("state.npz")
        self.data = b""

    def open(self, suffix: str = "") -> io.BytesIO:
        assert suffix == ""
        sink = self

        class _File(io.BytesIO):
            def close(self) -> None:
                if not self.closed:
                    sink.data = self.getvalue()
                super().close()

        return _File()


class BytesSource:
    """A :class:`amber.registry.StateSource` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.path = Path("state.npz")
        self.data = data

    def has(self, suffix: str = "") -> bool:
        return suffix == ""

    def read(self, suffix: str = "") -> memoryview:
        assert suffix == ""
        return memoryview(bytearray(self.data))


def encode(spec: FormatSpec, state: Any) -> bytes:
    sink = BytesSink()
    spec.write(state, sink)
    return sink.data


def decode(spec: FormatSpec, data: bytes) -> Any:
    return spec.read(BytesSource(data))


def float_bits(value: float) -> bytes:
    return struct.pack(">d", value)


def bits_float(hex_bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(hex_bits))[0]


def assert_tree_equal(actual: Any, expected: Any, path: str = "") -> None:
    """Exact equality as a portable format promises it (tuples come back as lists)."""
    treeutil.assert_tree_equal(actual, expected, tuples_as_lists=True, path=path)


def rich_state(seed: int = 0) -> dict[str, Any]:
    """A state tree touching every kind of leaf and container npz must keep exactly."""
    rng = np.random.default_rng(seed)
    deep: Any = {"leaf": seed}
    for i in range(60):
        deep = [deep] if i % 2 else {"down": deep}
    return {
        "params": {
            "w": rng.standard_normal((3, 4)).astype(np.float32),
            "b": np.zeros(4, dtype=">f8"),  # big-endian stays big-endian
        },
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "strided": np.arange(20, dtype=np.int64)[::3],
        "empty": np.zeros((0, 5), dtype=np.uint8),
        "zero_d": np.array(3.5),
        "mask": np.array([True, False, True]),
        "complex": np.array([1 + 2j, -0.0 - 1j], dtype=np.complex64),
        "half": np.array([np.nan, -0.0, np.inf], dtype=np.float16),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "scalars": [
            np.float32(1.5), np.int8(-3), np.bool_(True), np.uint64(2**64 - 1),
            np.complex128(1j), np.float64(-0.0), np.float16(np.inf),
        ],
        "floats": [
            0.1, -0.0, float("inf"), float("-inf"), float("nan"),
            bits_float("7ff8000000000123"), bits_float("fff8000000000000"),
            5e-324, 1.7976931348623157e308,
        ],
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "bool_vs_int": [True, 1, False, 0, 1.0],
        "keys": {1: "int one", "1": "str one", -5: None, "": "empty", "s:x": "a", "i:2": "b"},
        "order": {"z": 1, "a": 2, "m": 3},
        "text": "h\u00e9llo \u2603 \U0001f600 lone \ud800 nul \x00",
        "raw": b"\x00\xffbinary" + bytes(range(256)),
        "empty_containers": {"l": [], "d": {}, "t": ()},
        "tuple": (1, (2, 3), [4]),
        "deep": deep,
        "none": None,
        "step": seed,
    }


def policies_state() -> dict[str, Any]:
    return {
        "default_policy": {"weights": rich_state(1), "lr": 3e-4, "seq_lens": (16, 32)},
        "opponent": {"weights": {"w": np.ones((2, 2), dtype=np.float64)}, "frozen": True},
    }


def npz_bytes(document: Any, /, **arrays: Any) -> bytes:
    """An archive with ``document`` (JSON-encoded unless bytes) as the tree and ``arrays``."""
    text = document if isinstance(document, bytes) else json.dumps(document).encode()
    buf = io.BytesIO()
    np.savez(buf, __tree__=np.frombuffer(text, dtype=np.uint8), **arrays)
    return buf.getvalue()


def doc(root: Any) -> dict[str, Any]:
    return {"format": "amber-npz", "version": 1, "root": root}


class _Canary:
    """Unpickling this runs code: it sets ``builtins._amber_npz_test_pickle_ran``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"import builtins; builtins.{CANARY} = True",))


def _object_array() -> np.ndarray:
    arr = np.empty(1, dtype=object)
    arr[0] = _Canary()
    return arr


def _huge_declared_member() -> bytes:
    """A stored member whose .npy header claims 8 TB of float64 but holds 16 bytes."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
    )
    npy.write(b"\0" * 16)
    tree = json.dumps(doc(["array", "a0"])).encode()
    tree_npy = io.BytesIO()
    np.save(tree_npy, np.frombuffer(tree, dtype=np.uint8))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("__tree__.npy", tree_npy.getvalue())
        zf.writestr("a0.npy", npy.getvalue())
    return out.getvalue()


def _compressed() -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        __tree__=np.frombuffer(json.dumps(doc(["array", "a0"])).encode(), dtype=np.uint8),
        a0=np.zeros(3),
    )
    return buf.getvalue()


def _npy_only() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    return buf.getvalue()


def _nested_lists(depth: int) -> Any:
    node: Any = ["none"]
    for _ in range(depth):
        node = ["list", node]
    return node


MALFORMED: dict[str, Any] = {
    "empty file": lambda: b"",
    "not a zip": lambda: b"hello, world",
    "a pickle": lambda: pickle.dumps(_Canary()),
    "a plain .npy": _npy_only,
    "truncated": lambda: npz_bytes(doc(["array", "a0"]), a0=np.arange(100))[:300],
    "no tree member": lambda: _without_tree(),
    "tree not uint8": lambda: _raw_tree(np.arange(4, dtype=np.int32)),
    "tree 2-d": lambda: _raw_tree(np.zeros((2, 2), dtype=np.uint8)),
    "tree not utf-8": lambda: npz_bytes(b"\xff\xfe\xfd"),
    "tree not json": lambda: npz_bytes(b"{"),
    "tree json NaN": lambda: npz_bytes(b'{"format":"amber-npz","version":1,"root":["float",NaN]}'),
    "tree json float": lambda: npz_bytes(doc(["int", 1.5])),
    "tree repeats a key": lambda: npz_bytes(
        b'{"format":"amber-npz","format":"amber-npz","version":1,"root":["none"]}'
    ),
    "tree is a list": lambda: npz_bytes([["none"]]),
    "other format": lambda: npz_bytes({"format": "other", "version": 1, "root": ["none"]}),
    "future version": lambda: npz_bytes({"format": "amber-npz", "version": 2, "root": ["none"]}),
    "bool version": lambda: npz_bytes({"format": "amber-npz", "version": True, "root": ["none"]}),
    "extra document key": lambda: npz_bytes({**doc(["none"]), "x": 1}),
    "root not a node": lambda: npz_bytes(doc({"t": "none"})),
    "empty node": lambda: npz_bytes(doc([])),
    "unknown tag": lambda: npz_bytes(doc(["pickle", "gASV"])),
    "none with a value": lambda: npz_bytes(doc(["none", 1])),
    "bool holds int": lambda: npz_bytes(doc(["bool", 1])),
    "int holds bool": lambda: npz_bytes(doc(["int", True])),
    "int holds number": lambda: npz_bytes(doc(["int", 5])),
    "int leading zero": lambda: npz_bytes(doc(["int", "01"])),
    "int too big": lambda: npz_bytes(doc(["int", str(2**64)])),
    "int huge string": lambda: npz_bytes(doc(["int", "9" * 5000])),
    "float bad hex": lambda: npz_bytes(doc(["float", "zz"])),
    "float short": lambda: npz_bytes(doc(["float", "7ff8"])),
    "str holds int": lambda: npz_bytes(doc(["str", 3])),
    "bytes bad base64": lambda: npz_bytes(doc(["bytes", "!!!"])),
    "two values": lambda: npz_bytes(doc(["str", "a", "b"])),
    "dict odd": lambda: npz_bytes(doc(["dict", "s:a"])),
    "dict bad key prefix": lambda: npz_bytes(doc(["dict", "x:a", ["none"]])),
    "dict bad int key": lambda: npz_bytes(doc(["dict", "i:1.0", ["none"]])),
    "dict non-str key": lambda: npz_bytes(doc(["dict", 1, ["none"]])),
    "dict repeats key": lambda: npz_bytes(doc(["dict", "s:a", ["none"], "s:a", ["none"]])),
    "ref not a name": lambda: npz_bytes(doc(["ref", "os:system('rm -rf /')"])),
    "missing array": lambda: npz_bytes(doc(["array", "a0"])),
    "array referenced twice": lambda: npz_bytes(
        doc(["list", ["array", "a0"], ["array", "a0"]]), a0=np.zeros(2)
    ),
    "array reference not a str": lambda: npz_bytes(doc(["array", 0]), a0=np.zeros(2)),
    "tree as an array": lambda: npz_bytes(doc(["array", "__tree__"])),
    "unreferenced member": lambda: npz_bytes(doc(["none"]), a0=np.zeros(2)),
    "unexpected member name": lambda: npz_bytes(doc(["none"]), evil=np.zeros(2)),
    "scalar not 0-d": lambda: npz_bytes(doc(["scalar", "a0"]), a0=np.zeros(2)),
    "unicode dtype": lambda: npz_bytes(doc(["array", "a0"]), a0=np.array(["text"])),
    "datetime dtype": lambda: npz_bytes(
        doc(["array", "a0"]), a0=np.array(["2020-01-01"], dtype="M8[D]")
    ),
    "structured dtype": lambda: npz_bytes(
        doc(["array", "a0"]), a0=np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])
    ),
    "void dtype": lambda: npz_bytes(doc(["array", "a0"]), a0=np.zeros(2, dtype="V8")),
    "object dtype (pickle)": lambda: npz_bytes(doc(["array", "a0"]), a0=_object_array()),
    "compressed member": _compressed,
    "declared size larger than member": _huge_declared_member,
    "json nested 100000 deep": lambda: npz_bytes(
        b'{"format":"amber-npz","version":1,"root":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    ),
    "tree nested 300 deep": lambda: npz_bytes(doc(_nested_lists(300))),
}


def _without_tree() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a0=np.zeros(2))
    return buf.getvalue()


def _raw_tree(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __tree__=array)
    return buf.getvalue()


# --------------------------------------------------------------------------
# the distribution, as pip installed it
# --------------------------------------------------------------------------


def test_pyproject_matches_install_helper() -> None:
    tomllib = pytest.importorskip("tomllib")
    with open(install.NPZ_SOURCE / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["name"] == install.NPZ_DISTRIBUTION
    assert project["version"] == install.NPZ_VERSION
    assert tuple(project["dependencies"]) == install.NPZ_REQUIRES
    assert not any(dep.startswith("amber") for dep in project["dependencies"])
    assert project["entry-points"]["amber"] == {install.NPZ_ENTRY_POINT: install.NPZ_MODULE}


def test_installed_distribution(npz_installed: Path) -> None:
    dist = importlib.metadata.distribution("amber-npz")
    assert dist.version == "0.1.0"
    assert Path(dist.locate_file("amber_npz.py")).parent == npz_installed
    assert dist.requires == ["numpy>=1.24"]
    (entry_point,) = dist.entry_points.select(group="amber")
    assert (entry_point.name, entry_point.value) == ("npz", "amber_npz")
    module = entry_point.load()
    assert Path(module.__file__).parent == npz_installed  # not the source tree


def test_not_visible_without_the_fixture(npz_site: Path) -> None:
    assert str(npz_site) not in sys.path
    assert "amber_npz" not in sys.modules
    assert "npz" not in get_registry(get_plugin_manager(autoload=True, allow=None)).names()


def test_registered_with_provenance(npz_pm: pluggy.PluginManager) -> None:
    registry = get_registry(npz_pm)
    assert "npz" in registry.names()
    assert "pickle" in registry.names()
    provided = registry.provider("npz")
    assert provided.plugin == "npz"
    assert provided.distribution == "amber-npz"
    spec = registry.get("npz")
    assert spec.extension == ".npz"
    assert spec.capabilities == Capabilities(portable=True, safe=True, arbitrary_objects=False)
    assert spec.extra is None  # its dependencies come with its own distribution, not an amber extra
    assert spec.description


# --------------------------------------------------------------------------
# through the engine: save, read, inspect, verify, convert
# --------------------------------------------------------------------------


@pytest.fixture
def algo_ckpt(tmp_path: Path, npz_pm: pluggy.PluginManager) -> Path:
    return write_checkpoint(
        tmp_path / "algo", type="Algorithm", state=rich_state(), format="npz",
        policies=policies_state(), metadata={"run": "third-party"}, pm=npz_pm,
    )


def test_algorithm_round_trip(algo_ckpt: Path, npz_pm: pluggy.PluginManager) -> None:
    ckpt = read_checkpoint(algo_ckpt, allow_pickle=False, pm=npz_pm)
    assert (ckpt.type, ckpt.format) == ("Algorithm", "npz")
    assert ckpt.metadata == {"run": "third-party"}
    assert ckpt.manifest["format_plugin"] == {"name": "npz", "distribution": "amber-npz"}
    assert_tree_equal(ckpt.state, rich_state())
    assert list(ckpt.policies) == ["default_policy", "opponent"]
    for pid, pstate in policies_state().items():
        assert_tree_equal(ckpt.policies[pid].state, pstate, pid)
    subset = read_checkpoint(algo_ckpt, policy_ids=["opponent"], pm=npz_pm)
    assert list(subset.policies) == ["opponent"]


def test_state_file_is_a_plain_npz(algo_ckpt: Path) -> None:
    state_file = algo_ckpt / "algorithm_state.npz"
    assert zipfile.is_zipfile(state_file)
    with np.load(state_file, allow_pickle=False) as npz:
        assert "__tree__" in npz.files
        document = json.loads(npz["__tree__"].tobytes())
        assert document["format"] == "amber-npz" and document["version"] == 1
        assert all(npz[name].dtype != object for name in npz.files)


def test_save_load_state(tmp_path: Path, npz_pm: pluggy.PluginManager) -> None:
    path = amber.save(rich_state(3), tmp_path / "s", format="npz", pm=npz_pm)
    assert (path / "state.npz").is_file()
    assert_tree_equal(amber.load(path, allow_pickle=False, pm=npz_pm), rich_state(3))


def test_inspect_and_verify(algo_ckpt: Path) -> None:
    info = get_checkpoint_info(algo_ckpt)
    assert info["type"] == "Algorithm"
    assert info["format"] == "npz"
    assert info["state_file"] == str(algo_ckpt / "algorithm_state.npz")
    assert info["policy_ids"] == ["default_policy", "opponent"]
    assert "algorithm_state.npz" in info["files"]
    assert "policy_state.npz" in info["policies"]["opponent"]["files"]
    report = verify(algo_ckpt)
    assert report.ok, report.problems
    assert algo_ckpt / "policies" / "opponent" / "policy_state.npz" in report.checked


def test_convert_to_pickle_and_back(
    algo_ckpt: Path, tmp_path: Path, npz_pm: pluggy.PluginManager
) -> None:
    as_pickle = convert_checkpoint(algo_ckpt, tmp_path / "pkl", format="pickle", pm=npz_pm)
    assert get_checkpoint_info(as_pickle)["format"] == "pickle"
    back = convert_checkpoint(
        as_pickle, tmp_path / "npz-again", format="npz", allow_pickle=True, pm=npz_pm
    )
    assert verify(back).ok
    for path in (as_pickle, back):
        ckpt = read_checkpoint(path, allow_pickle=True, pm=npz_pm)
        assert_tree_equal(ckpt.state, rich_state())
        for pid, pstate in policies_state().items():
            assert_tree_equal(ckpt.policies[pid].state, pstate, pid)
    # The npz written from the pickle checkpoint is the same file, byte for byte.
    for rel in ("algorithm_state.npz", "policies/opponent/policy_state.npz"):
        assert (Path(back) / rel).read_bytes() == (algo_ckpt / rel).read_bytes()


def test_functions_and_classes_come_back_as_refs(
    tmp_path: Path, npz_pm: pluggy.PluginManager
) -> None:
    amber.register_class(json.dumps, name="tests.npz.dumps")
    amber.register_class(collections.OrderedDict, name="tests.npz.OrderedDict")
    state = {"fn": json.dumps, "cls": collections.OrderedDict, "ref": Ref("tests.npz.loads")}
    path = amber.save({k: v for k, v in state.items() if k != "ref"}, tmp_path / "r",
                      format="npz", pm=npz_pm)
    loaded = amber.load(path, pm=npz_pm)
    assert loaded == {"fn": Ref("tests.npz.dumps"), "cls": Ref("tests.npz.OrderedDict")}
    assert loaded["fn"].resolve() is json.dumps
    # A Ref read back writes again as itself (the plugin's own round trip).
    spec = get_registry(npz_pm).get("npz")
    named = {"fn": Ref("tests.npz.dumps"), "cls": Ref("tests.npz.OrderedDict"), "ref": Ref("tests.npz.loads")}
    assert decode(spec, encode(spec, named)) == {
        "fn": Ref("tests.npz.dumps"), "cls": Ref("tests.npz.OrderedDict"), "ref": Ref("tests.npz.loads")
    }


def test_detect_format_hook(algo_ckpt: Path, npz_pm: pluggy.PluginManager) -> None:
    state_file = algo_ckpt / "algorithm_state.npz"
    header = state_file.read_bytes()[:64]
    assert header.startswith(b"PK\x03\x04")
    assert npz_pm.hook.amber_detect_format(path=state_file, header=header) == "npz"
    assert npz_pm.hook.amber_detect_format(path=Path("x.zip"), header=header) is None
    assert npz_pm.hook.amber_detect_format(path=Path("x.npz"), header=b"not a zip") is None
    bare = get_plugin_manager(autoload=False)
    assert bare.hook.amber_detect_format(path=state_file, header=header) is None


# --------------------------------------------------------------------------
# switching the plugin off
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_autoload_off_hides_npz(
    how: str, algo_ckpt: Path, npz_installed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "argument":
        pm = get_plugin_manager(autoload=False)
    else:
        monkeypatch.setenv("AMBER_DISABLE_PLUGIN_AUTOLOAD", "1")
        pm = get_plugin_manager()
    assert "npz" not in get_registry(pm).names()
    assert "pickle" in get_registry(pm).names()  # in-tree formats stay
    with pytest.raises(MissingPluginError) as excinfo:
        read_checkpoint(algo_ckpt, pm=pm)
    assert "amber-npz" in str(excinfo.value)
    assert excinfo.value.format == "npz"
    # Inspecting and verifying never need the format's plugin.
    assert get_checkpoint_info(algo_ckpt)["format"] == "npz"
    assert verify(algo_ckpt).ok


@pytest.mark.parametrize(
    ("allow", "env", "present"),
    [
        (["something-else"], None, False),
        (None, "something-else", False),
        ([], None, False),
        (["npz"], None, True),
        (None, "other, npz", True),
    ],
)
def test_allow_list(
    allow: list[str] | None, env: str | None, present: bool,
    npz_installed: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import warnings

    if env is not None:
        monkeypatch.setenv("AMBER_PLUGINS", env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_plugin_manager(allow=allow)
    assert ("npz" in get_registry(pm).names()) is present
    # a name no installed plugin has (a typo) is said, not silently ignored
    named = allow if allow is not None else [n.strip() for n in env.split(",")] if env else []
    unknown = [n for n in named if n != "npz"]
    said = [str(w.message) for w in caught if "which no installed plugin is called" in str(w.message)]
    assert said == ([f"{'allow' if allow is not None else 'AMBER_PLUGINS'} names {', '.join(unknown)}, which no "
                     f"installed plugin is called (installed: npz)"] if unknown else [])
    assert "pickle" in get_registry(pm).names()


def test_duplicate_format_names_both_plugins(npz_pm: pluggy.PluginManager) -> None:
    class Impostor:
        @amber.hookimpl
        def amber_register_formats(self) -> list[FormatSpec]:
            return [
                FormatSpec(
                    name="npz", extension=".npz2",
                    capabilities=Capabilities(portable=True, safe=True, arbitrary_objects=False),
                    write=lambda state, sink: None, read=lambda source: None,
                )
            ]

    npz_pm.register(Impostor(), name="impostor-npz")
    with pytest.raises(DuplicateFormatError) as excinfo:
        build_registry(npz_pm)
    message = str(excinfo.value)
    assert "'npz'" in message and "amber-npz" in message and "impostor-npz" in message
    assert isinstance(excinfo.value, PluginLoadError)
    assert excinfo.value.format == "npz"


# --------------------------------------------------------------------------
# the format itself: exactness, validation at write, safety at read
# --------------------------------------------------------------------------


def test_codec_round_trip_exact(npz_spec: FormatSpec) -> None:
    for state in (rich_state(7), None, 0, -0.0, "", b"", [], {}, np.float32("nan"), (1, 2)):
        assert_tree_equal(decode(npz_spec, encode(npz_spec, state)), state)


def test_codec_round_trip_property(npz_spec: FormatSpec) -> None:
    # @given inside the test, since function-scoped fixtures do not mix with @given.
    @settings(max_examples=150, deadline=None)
    @given(tree=treeutil.state_trees)
    def check(tree: Any) -> None:
        assert_tree_equal(decode(npz_spec, encode(npz_spec, tree)), tree)

    check()


def _self_containing() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


@pytest.mark.parametrize(
    ("state", "where"),
    [
        ({"a": {"b": {1, 2}}}, "a.b"),
        ({"fn": lambda: None}, "fn"),
        ({"obj": object()}, "obj"),
        ({"arr": np.array([object()], dtype=object)}, "arr"),
        ({"text": np.array(["x"])}, "text"),
        ({"numpy str": [np.str_("x")]}, "numpy str[0]"),  # a str subclass, that would come back a str
        ({"numpy bytes": np.bytes_(b"x")}, "numpy bytes"),
        ({"masked": np.ma.masked_array([1, 2], mask=[0, 1])}, "masked"),
        ({"big": 2**64}, "big"),
        ({"keys": {(1, 2): 0}}, "keys"),
        ({"keys": {True: 0}}, "keys"),
        ({"keys": {2**70: 0}}, "keys"),
        ({"c": 1j}, "c"),
        ({"loop": _self_containing()}, "loop"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_write_refuses_what_it_cannot_hold(npz_spec: FormatSpec, state: Any, where: str) -> None:
    with pytest.raises(UnserializableStateError) as excinfo:
        encode(npz_spec, state)
    assert where in str(excinfo.value) and "'npz'" in str(excinfo.value)
    assert excinfo.value.format == "npz"


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_input_raises(npz_spec: FormatSpec, case: str, no_canary: None) -> None:
    data = MALFORMED[case]()
    with pytest.raises(ValueError, match="^malformed npz checkpoint: "):
        decode(npz_spec, data)


def test_mutated_files_never_unpickle_or_hang(npz_spec: FormatSpec, no_canary: None) -> None:
    rng = random.Random(1234)
    seeds = [
        encode(npz_spec, rich_state()),
        npz_bytes(doc(["array", "a0"]), a0=_object_array()),
    ]
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            del data[rng.randrange(len(data)) :]
        try:
            decode(npz_spec, bytes(data))
            outcomes["read"] += 1
        except ValueError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


def test_engine_reports_malformed_npz_as_corrupt(
    tmp_path: Path, npz_pm: pluggy.PluginManager, no_canary: None
) -> None:
    path = amber.save({"w": np.zeros(3)}, tmp_path / "s", format="npz", pm=npz_pm)
    evil = npz_bytes(doc(["array", "a0"]), a0=_object_array())
    (path / "state.npz").write_bytes(evil)
    treeutil.recompute_digests(path)  # as an attacker could: it now passes the digest check
    assert verify(path).ok
    with pytest.raises(CorruptCheckpointError) as excinfo:
        amber.load(path, allow_pickle=True, pm=npz_pm)
    assert "'npz'" in str(excinfo.value) and "state.npz" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, ValueError)


def test_bytes_tag_is_base64(npz_spec: FormatSpec) -> None:
    data = encode(npz_spec, {"b": b"\x00\x01"})
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        document = json.loads(npz["__tree__"].tobytes())
    assert document["root"] == ["dict", "s:b", ["bytes", base64.b64encode(b"\x00\x01").decode()]]


# --------------------------------------------------------------------------
# the command line, in a subprocess with the plugin on PYTHONPATH
# --------------------------------------------------------------------------


def _run_cli(site: Path, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", "from amber.cli import main; main()", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120, check=False,
    )


def test_cli_lists_npz(npz_site: Path, tmp_path: Path) -> None:
    pytest.importorskip("amber.cli")
    formats = _run_cli(npz_site, tmp_path, "formats")
    assert formats.returncode == 0, formats.stderr
    assert "npz" in formats.stdout and "amber-npz" in formats.stdout
    plugins = _run_cli(npz_site, tmp_path, "plugins")
    assert plugins.returncode == 0, plugins.stderr
    assert "amber-npz 0.1.0" in plugins.stdout
    off = _run_cli(npz_site, tmp_path, "formats", AMBER_DISABLE_PLUGIN_AUTOLOAD="1")
    assert off.returncode == 0, off.stderr
    assert "amber-npz" not in off.stdout and "pickle" in off.stdout


def test_cli_inspect_verify(npz_site: Path, algo_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("amber.cli")
    inspected = _run_cli(npz_site, tmp_path, "inspect", str(algo_ckpt), "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["format"] == "npz"
    verified = _run_cli(npz_site, tmp_path, "verify", str(algo_ckpt))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_cli_convert(npz_site: Path, algo_ckpt: Path, tmp_path: Path) -> None:
    pytest.importorskip("amber.cli")
    dst = tmp_path / "converted"
    converted = _run_cli(npz_site, tmp_path, "convert", str(algo_ckpt), str(dst), "--format",
                         "pickle")
    assert converted.returncode == 0, converted.stderr
    assert get_checkpoint_info(dst)["format"] == "pickle"
    missing = _run_cli(npz_site, tmp_path, "convert", str(algo_ckpt), str(tmp_path / "x"),
                       "--format", "pickle", AMBER_DISABLE_PLUGIN_AUTOLOAD="1")
    assert missing.returncode != 0
    assert "amber-npz" in missing.stderr
