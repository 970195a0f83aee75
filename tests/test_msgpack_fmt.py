"""The msgpack format: exact round trips, the safetensors sidecar, and hostile input."""

from __future__ import annotations

import collections
import enum
import json
import math
import os.path
import pickle
import re
import sys
import tempfile
from pathlib import Path

import msgpack
import msgpack_numpy
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amber
import amber.plugins.msgpack_fmt as msgpack_fmt
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.envs import MultiAgentCartPole
from amber.errors import CheckpointError, CorruptCheckpointError, UnserializableStateError
from amber.layout import Sink
from amber.plugins.msgpack_fmt import safetensors_io
from amber.plugins.msgpack_fmt.codec import EXT_REF, INLINE_MAX_BYTES
from amber.plugins.msgpack_fmt.safetensors_io import HEADER_ALIGN, MAX_HEADER_BYTES
from amber.registry import get_registry
from amber.state import MAX_DEPTH, Ref

from .treeutil import assert_tree_equal, recompute_digests, state_trees

BIG = INLINE_MAX_BYTES // 8 + 1  # float64 elements that make an array go to the sidecar


def module_level_function(x: int) -> int:
    return x + 1


class ModuleLevelClass:
    pass


amber.register_class(module_level_function, name="tests.msgpack.module_level_function")
amber.register_class(ModuleLevelClass, name="tests.msgpack.ModuleLevelClass")


class Color(enum.IntEnum):
    RED = 1


def roundtrip(state, tmp_path: Path, pm):
    path = amber.save(state, tmp_path / "ck", format="msgpack", pm=pm)
    return amber.load(path, pm=pm)


def assert_exact(got, want) -> None:
    assert_tree_equal(got, want, tuples_as_lists=True)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


# -- registration -----------------------------------------------------------------------------


def test_registered_with_its_capabilities(bare_pm):
    spec = get_registry(bare_pm).get("msgpack")
    assert spec.extension == ".msgpck"
    caps = spec.capabilities
    assert (caps.portable, caps.safe, caps.arbitrary_objects) == (True, True, False)


def test_detect_format(bare_pm, tmp_path):
    detect = bare_pm.hook.amber_detect_format
    assert detect(path=tmp_path / "state.msgpck", header=b"") == "msgpack"
    doc = msgpack.packb({"step": 1}, use_bin_type=True)
    assert detect(path=tmp_path / "renamed.bin", header=doc[:64]) == "msgpack"
    assert detect(path=tmp_path / "x.bin", header=pickle.dumps({"step": 1})[:64]) != "msgpack"
    assert detect(path=tmp_path / "state.safetensors", header=b"\x81\xa1a") is None


# -- exact round trips -----------------------------------------------------------------------


SCALARS = {
    "none": None, "true": True, "false": False, "zero": 0, "one": 1, "one_float": 1.0,
    "int_max": 2**64 - 1, "int_min": -(2**63), "int63": 2**63 - 1, "uint63": 2**63,
    "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "negzero": -0.0,
    "tiny": 5e-324, "str": "héllo ☃", "empty_str": "", "bytes": b"\x00\xff", "empty_bytes": b"",
    "str_looks_bytes": "\x00\xff",
}


def test_scalars_round_trip_exactly(bare_pm, tmp_path):
    got = roundtrip(SCALARS, tmp_path, bare_pm)
    assert_exact(got, SCALARS)
    assert got["true"] is True and type(got["one"]) is int and type(got["one_float"]) is float
    assert math.copysign(1.0, got["negzero"]) == -1.0


def test_odd_nan_payload_survives(bare_pm, tmp_path):
    odd_nan = np.frombuffer(b"\x01\x00\x00\x00\x00\x00\xf8\x7f", "<f8")[0].item()
    got = roundtrip({"x": odd_nan}, tmp_path, bare_pm)
    assert np.float64(got["x"]).tobytes() == np.float64(odd_nan).tobytes()


def test_key_order_and_int_keys(bare_pm, tmp_path):
    state = {"z": 1, "a": 2, 5: "five", -1: "neg", 2**64 - 1: "max", "m": {3: [], "b": {}}}
    got = roundtrip(state, tmp_path, bare_pm)
    assert_exact(got, state)
    assert list(got) == ["z", "a", 5, -1, 2**64 - 1, "m"]


class Sneaky(str):
    def __str__(self) -> str:
        return "something else"


def test_tuples_come_back_as_lists_and_subclasses_as_their_base(bare_pm, tmp_path):
    state = {"t": (1, (2.0, "x")), "od": collections.OrderedDict(b=1, a=2), "enum": Color.RED,
             "nested": [(), ((),)], Sneaky("key"): Sneaky("value"), Color.RED: "enum key",
             "mixed": (np.arange(3), {"in": (np.float32(1),)})}
    got = roundtrip(state, tmp_path, bare_pm)
    assert_exact(got, {"t": [1, [2.0, "x"]], "od": {"b": 1, "a": 2}, "enum": 1, "nested": [[], [[]]],
                       "key": "value", 1: "enum key", "mixed": [np.arange(3), {"in": [np.float32(1)]}]})


def _array_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    cases = {}
    for dtype in ["|b1", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8", "<f2", "<f4",
                  "<f8", "<c8", "<c16", ">f4", ">i8", ">c16", ">u2", "<f16"]:
        for size, n in (("small", 6), ("big", BIG)):
            a = rng.integers(0, 255, size=n * np.dtype(dtype).itemsize, dtype=np.uint8)
            cases[f"{dtype}-{size}"] = a.view(dtype)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324], dtype=np.float64)
    cases.update({
        "zero_d": np.array(3.5, dtype=np.float32),
        "zero_d_be": np.array(7, dtype=">i4"),
        "empty": np.zeros((0, 3), dtype=np.int16),
        "empty_big_dims": np.zeros((0, 2**40), dtype=np.float64),
        "strided": np.arange(20, dtype=np.float64)[::3],
        "strided_big": np.arange(4 * BIG, dtype=np.float64)[::2],
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "fortran_big": np.asfortranarray(np.arange(2 * BIG, dtype=np.float64).reshape(2, BIG)),
        "transposed_big": np.arange(3 * BIG, dtype=np.uint8).reshape(3, BIG).T,
        "specials": specials,
        "specials_big": np.tile(specials, BIG),
        "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
        "int64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "nd": np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5),
        "nd_big": np.arange(4 * 4 * BIG, dtype=">f8").reshape(4, 4, BIG)[:, ::2, ::3],
        "exactly_threshold": np.zeros(INLINE_MAX_BYTES, dtype=np.uint8),
        "below_threshold": np.zeros(INLINE_MAX_BYTES - 1, dtype=np.uint8),
    })
    return cases


ARRAYS = _array_cases()


@pytest.mark.parametrize("name", list(ARRAYS))
def test_array_round_trips_exactly(bare_pm, tmp_path, name):
    want = ARRAYS[name]
    got = roundtrip({"a": want}, tmp_path, bare_pm)["a"]
    assert type(got) is np.ndarray
    assert got.dtype.str == want.dtype.str and got.shape == want.shape
    assert np.array_equal(bits(got), bits(want))
    assert got.flags.writeable and got.flags.c_contiguous
    in_sidecar = (tmp_path / "ck" / "state.safetensors").exists()
    assert in_sidecar == (want.nbytes >= INLINE_MAX_BYTES)


NUMPY_SCALARS = [np.float32(1.5), np.float64(-0.0), np.float16(np.inf), np.int8(-3), np.int64(-(2**63)),
                 np.uint64(2**64 - 1), np.uint8(255), np.bool_(True), np.bool_(False),
                 np.complex64(1 - 2j), np.complex128(complex("nan+infj")), np.longdouble(1.25)]


def test_numpy_scalars_keep_their_type(bare_pm, tmp_path):
    got = roundtrip({"s": NUMPY_SCALARS}, tmp_path, bare_pm)["s"]
    for g, w in zip(got, NUMPY_SCALARS, strict=True):
        assert type(g) is type(w), (g, w)
        assert g.tobytes() == w.tobytes()


def test_root_may_be_a_leaf_or_an_array(bare_pm, tmp_path):
    for i, state in enumerate([None, 3, "x", np.float32(2), np.arange(3), np.arange(BIG, dtype="f8")]):
        got = roundtrip(state, tmp_path / str(i), bare_pm)
        assert_exact(got, state)


def test_user_maps_are_never_taken_for_arrays(bare_pm, tmp_path):
    lookalike = {"nd": True, "type": "<f4", "kind": "", "shape": [1], "data": b"\0\0\0\0"}
    state = {"a": lookalike, "b": {"nd": False, "type": "|O", "data": b"x"},
             "c": {"safetensors": "a", "type": "<f8", "shape": [1]}, "nd": {"nd": {"nd": 1}}}
    got = roundtrip(state, tmp_path, bare_pm)
    assert_exact(got, state)
    assert type(got["a"]) is dict


def test_deepest_allowed_tree_round_trips(bare_pm, tmp_path):
    state: list = []
    for _ in range(MAX_DEPTH):
        state = [state]
    assert roundtrip(state, tmp_path, bare_pm) == state


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state_trees)
def test_state_trees_round_trip_exactly(bare_pm, state):
    with tempfile.TemporaryDirectory() as tmp:
        assert_exact(roundtrip(state, Path(tmp), bare_pm), state)


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state_trees)
def test_state_trees_round_trip_exactly_with_every_array_in_the_sidecar(bare_pm, monkeypatch, state):
    monkeypatch.setattr(msgpack_fmt, "INLINE_MAX_BYTES", 0)
    with tempfile.TemporaryDirectory() as tmp:
        got = roundtrip(state, Path(tmp), bare_pm)
        assert_exact(got, state)
        sidecar = Path(tmp) / "ck" / "state.safetensors"
        if sidecar.exists():  # the safetensors library accepts every layout we write
            safetensors.numpy.load_file(sidecar)


# -- functions and classes ----------------------------------------------------------------------


def test_functions_and_classes_come_back_as_refs(bare_pm, tmp_path):
    state = {"fn": module_level_function, "cls": ModuleLevelClass, "env": MultiAgentCartPole}
    got = roundtrip(state, tmp_path, bare_pm)
    assert got == {"fn": Ref("tests.msgpack.module_level_function"), "cls": Ref("tests.msgpack.ModuleLevelClass"),
                   "env": Ref("amber.MultiAgentCartPole")}
    for key in state:
        assert got[key].resolve() is state[key]


@pytest.mark.parametrize("obj", [len, os.path.join, lambda: 0], ids=["builtin", "stdlib", "lambda"])
def test_an_unregistered_function_is_refused_naming_its_key(bare_pm, tmp_path, obj):
    with pytest.raises(UnserializableStateError, match=r"cannot write x\.f .*register"):
        amber.save({"x": {"f": obj}}, tmp_path / "ck", pm=bare_pm)
    assert not (tmp_path / "ck").exists()


def test_a_loaded_ref_can_be_written_again(tmp_path):
    # The engine's validate_tree does not accept Ref leaves (yet); the format itself does.
    sink = Sink(tmp_path, "state", ".msgpck", {})
    msgpack_fmt.write({"r": Ref("collections:OrderedDict")}, sink)
    sink.finish()
    doc = msgpack.unpackb((tmp_path / "state.msgpck").read_bytes())
    assert doc == {"r": msgpack.ExtType(EXT_REF, b"collections:OrderedDict")}


def test_lambda_is_refused_naming_its_key_path(bare_pm, tmp_path):
    with pytest.raises(UnserializableStateError, match=r"config\.policy_mapping_fn"):
        amber.save({"config": {"policy_mapping_fn": lambda agent: "p0"}}, tmp_path / "ck", pm=bare_pm)
    assert not (tmp_path / "ck").exists()


def test_reading_a_ref_never_imports(bare_pm, tmp_path):
    doc = msgpack.packb({"f": msgpack.ExtType(EXT_REF, b"amber_no_such_module_x:evil")}, use_bin_type=True)
    got = amber.load(craft(tmp_path, bare_pm, doc), pm=bare_pm)
    assert got == {"f": Ref("amber_no_such_module_x:evil")}
    assert "amber_no_such_module_x" not in sys.modules


# -- the safetensors sidecar --------------------------------------------------------------------


def test_sidecar_is_loadable_by_safetensors(bare_pm, tmp_path):
    rng = np.random.default_rng(1)
    state = {"policy": {"w": rng.standard_normal((300, 100)).astype(np.float32),
                        "b": rng.integers(-9, 9, size=BIG, dtype=np.int64),
                        "mask": rng.integers(0, 2, size=INLINE_MAX_BYTES, dtype=np.uint8).astype(bool),
                        "h": rng.standard_normal(BIG * 4).astype(np.float16),
                        "fortran": np.asfortranarray(rng.standard_normal((200, 50)))},
             "complex": np.arange(BIG, dtype=np.complex128), "small": np.arange(3)}
    path = amber.save(state, tmp_path / "ck", pm=bare_pm)
    assert sorted(p.name for p in path.iterdir()) == [
        "checkpoint.json", "state.msgpck", "state.safetensors"]
    loaded = safetensors.numpy.load_file(path / "state.safetensors")
    for key in ("w", "b", "mask", "h", "fortran"):
        want = state["policy"][key]
        assert loaded[f"policy.{key}"].dtype == want.dtype
        assert np.array_equal(loaded[f"policy.{key}"], want)
    assert loaded["complex"].dtype == np.uint8  # no native complex128: raw bytes
    assert loaded["complex"].tobytes() == state["complex"].tobytes()
    raw = (path / "state.safetensors").read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % HEADER_ALIGN == 0


def test_sidecar_arrays_are_aligned_writable_views(bare_pm, tmp_path):
    n = INLINE_MAX_BYTES + 1  # bytes: odd sizes, so a naive layout would misalign what follows
    state = {"a": np.ones(n, np.uint8), "b": np.ones(n, np.float64), "c": np.ones(n, np.float32),
             "d": np.ones(n, np.complex128), "e": np.ones(n, ">f4"), "f": np.ones(n, np.float16)}
    got = roundtrip(state, tmp_path, bare_pm)

    def root(arr):
        while isinstance(arr, np.ndarray):
            arr = arr.base
        return arr

    assert isinstance(root(got["a"]), memoryview)
    for arr in got.values():
        assert arr.flags.writeable and arr.flags.aligned and not arr.flags.owndata
        assert arr.ctypes.data % arr.dtype.itemsize == 0
        assert root(arr).obj is root(got["a"]).obj  # views of the one buffer read, no copies
    got["b"][0] = 7.0
    assert got["b"][0] == 7.0


def test_file_from_safetensors_save_file_is_readable(bare_pm, tmp_path):
    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(5, dtype=np.int64),
               "z": np.zeros((0, 2), dtype=np.float16)}
    side = tmp_path / "side.safetensors"
    safetensors.numpy.save_file(tensors, side, metadata={"who": "them"})
    doc = msgpack.packb({k: {b"safetensors": k, b"type": v.dtype.str, b"shape": list(v.shape)}
                         for k, v in tensors.items()}, use_bin_type=True)
    got = amber.load(craft(tmp_path, bare_pm, doc, side.read_bytes()), pm=bare_pm)
    assert_exact(got, tensors)


def test_tensor_names_are_key_paths_made_unique(bare_pm, tmp_path):
    big = np.arange(BIG, dtype=np.float64)
    state = {"__metadata__": big, "a.b": big + 1, "a": {"b": big + 2, 3: [big + 3]}, "c": {"": big + 4}}
    path = amber.save(state, tmp_path / "ck", pm=bare_pm)
    names = set(safetensors.numpy.load_file(path / "state.safetensors"))
    assert names == {"__metadata__#2", "a.b", "a.b#2", "a[3][0]", "c."}
    assert_exact(amber.load(path, pm=bare_pm), state)


@pytest.mark.parametrize("order", ["F", "strided", "transposed3d", "reversed"])
def test_non_contiguous_arrays_are_written_in_small_chunks(bare_pm, tmp_path, monkeypatch, order):
    base = np.arange(4 * 6 * BIG, dtype=np.float64)
    array = {"F": np.asfortranarray(base.reshape(4 * 6, BIG)), "strided": base[::3],
             "transposed3d": base.reshape(4, 6, BIG).transpose(2, 0, 1),
             "reversed": base.reshape(24, BIG)[::-1, ::-1]}[order]
    monkeypatch.setattr(safetensors_io, "CHUNK_BYTES", 1000)
    chunks = list(safetensors_io._c_order_chunks(array))
    assert max(c.nbytes for c in chunks) <= 1000
    assert b"".join(chunks) == array.tobytes()
    assert_exact(roundtrip({"a": array}, tmp_path, bare_pm)["a"], array)


def test_contiguous_arrays_are_written_without_a_copy():
    array = np.arange(BIG, dtype=">f8").reshape(1, BIG)
    (chunk,) = safetensors_io._c_order_chunks(array)
    assert np.shares_memory(np.frombuffer(chunk, np.uint8), array)


def test_sidecar_is_not_read_unless_referenced(bare_pm, tmp_path):
    doc = msgpack.packb({"x": 1}, use_bin_type=True)
    path = craft(tmp_path, bare_pm, doc, b"not a safetensors file")
    assert amber.load(path, pm=bare_pm) == {"x": 1}


def test_inline_arrays_are_readable_by_msgpack_numpy(bare_pm, tmp_path):
    state = {"a": np.arange(6, dtype=">f4").reshape(2, 3), "s": np.float32(2.5), "n": 1}
    path = amber.save(state, tmp_path / "ck", pm=bare_pm)
    got = msgpack_numpy.unpackb((path / "state.msgpck").read_bytes(), strict_map_key=False)
    assert_exact(got, state)


def test_write_refuses_object_dtype_even_unvalidated(tmp_path):
    sink = Sink(tmp_path, "state", ".msgpck", {})
    for bad in (np.array([object()]), np.zeros(2, dtype="V4"), np.zeros(2, dtype=[("a", "f4")]),
                np.array(["s"]), np.zeros(1, dtype="M8[s]")):
        with pytest.raises(UnserializableStateError, match="dtype"):
            msgpack_fmt.write({"bad": bad}, Sink(tmp_path, f"s{id(bad)}", ".msgpck", {}))
    with pytest.raises(UnserializableStateError, match="x"):
        msgpack_fmt.write({"x": object()}, sink)


@pytest.mark.parametrize(("state", "where", "why"), [
    ({"s": np.str_("x")}, "s", "numpy dtype <U1 is not numeric or bool (convert numpy strings"),
    ({"b": [np.bytes_(b"x")]}, "b[0]", "numpy dtype |S1 is not numeric or bool (convert numpy strings"),
    ({"m": np.ma.array([1, 2], mask=[0, 1])}, "m", "masked arrays would lose their mask"),
    ({"u": ["ok", "a\udc80"]}, "u[1]", "not valid Unicode"),
    ({"k": {"a\udc80": 1}}, "k", "not valid Unicode"),
], ids=["np.str_", "np.bytes_", "masked", "surrogate", "surrogate key"])
def test_an_unwritable_leaf_is_named_with_the_checkpoints_own_path(bare_pm, tmp_path, state, where, why):
    with pytest.raises(UnserializableStateError) as info:
        amber.save(state, tmp_path / "ck", pm=bare_pm)
    assert info.value.path == str(tmp_path / "ck" / "state.msgpck")  # not the staging directory's
    assert f"cannot write {where} in format 'msgpack'" in str(info.value) and why in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_the_writer_names_the_key_path_of_a_string_with_no_utf8_form(tmp_path):
    class Text(str):
        pass

    for state, where in (({"a": ["ok", "a\udc80"]}, "a[1]"), ({"a": [Text("a\udc80")]}, "a[0]"),
                         ({"a": {"k\udc80": 1}}, "a"), ({"r": Ref("a\udc80")}, "r")):
        sink = Sink(tmp_path, f"s{len(list(tmp_path.iterdir()))}", ".msgpck", {})
        with pytest.raises(UnserializableStateError, match=rf"cannot write {re.escape(where)} .*not valid Unicode") as info:
            msgpack_fmt.write(state, sink)
        assert info.value.path == str(sink.path)


# -- hostile input ------------------------------------------------------------------------------


def craft(tmp_path: Path, pm, doc: bytes, sidecar: bytes | None = None) -> Path:
    """A checkpoint whose files hold ``doc`` (and ``sidecar``), with matching digests."""
    state = {"x": np.zeros(BIG)} if sidecar is not None else {"x": 1}
    path = write_checkpoint(tmp_path / "crafted", type="State", state=state, format="msgpack", pm=pm)
    (path / "state.msgpck").write_bytes(doc)
    if sidecar is not None:
        (path / "state.safetensors").write_bytes(sidecar)
    recompute_digests(path)
    return path


class OpenOnUnpickle:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_object_dtype_map_is_refused_without_unpickling(bare_pm, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(OpenOnUnpickle(marker))
    evil = {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": payload}
    doc = msgpack.packb({"w": evil}, use_bin_type=True)
    # the payload is live: msgpack-numpy's own decoder would run it
    msgpack_numpy.unpackb(doc)
    assert marker.exists()
    marker.unlink()
    variants = [doc, msgpack.packb({"w": {**evil, b"kind": b""}}, use_bin_type=True),
                msgpack.packb(evil, use_bin_type=True),
                msgpack.packb([{b"nd": False, b"type": "|O", b"data": payload}], use_bin_type=True)]
    for i, variant in enumerate(variants):
        with pytest.raises(CheckpointError) as e:
            read_checkpoint(craft(tmp_path / str(i), bare_pm, variant), pm=bare_pm)
        assert isinstance(e.value, CorruptCheckpointError) and "state.msgpck" in str(e.value)
    assert not marker.exists()


def _nd(**overrides) -> dict:
    d = {b"nd": True, b"type": "<f4", b"kind": b"", b"shape": [2], b"data": b"\0" * 8}
    d.update({k.encode(): v for k, v in overrides.items()})
    return {k: v for k, v in d.items() if v is not ...}


HOSTILE_DOCS = {
    "empty file": b"",
    "truncated": msgpack.packb({"a": [1, 2, 3]})[:-1],
    "trailing garbage": msgpack.packb({"a": 1}) + b"\x00",
    "unknown ext": msgpack.packb({"a": msgpack.ExtType(42, b"x")}),
    "timestamp ext": msgpack.packb({"a": msgpack.Timestamp(1, 0)}),
    "timestamp in list": msgpack.packb([msgpack.Timestamp(1, 0)]),
    "timestamp root": msgpack.packb(msgpack.Timestamp(1, 0)),
    "ref not a name": msgpack.packb(msgpack.ExtType(EXT_REF, b"os:system; rm -rf")),
    "ref bad utf8": msgpack.packb(msgpack.ExtType(EXT_REF, b"\xff:x")),
    "float key": msgpack.packb({1.5: 1}),
    "none key": msgpack.packb({None: 1}),
    "bool key": msgpack.packb({True: 1}),
    "list key": b"\x81\x91\x01\x01",
    "duplicate key": b"\x82\xa1a\x01\xa1a\x02",
    "invalid utf8": b"\xa2\xff\xfe",
    "deep lists": b"\x91" * 100_000 + b"\xc0",
    "deep maps": b"\x81\xa1a" * 5_000 + b"\xc0",
    "deeper than MAX_DEPTH": b"\x91" * (MAX_DEPTH + 2) + b"\xc0",
    "huge array": b"\xdd\xff\xff\xff\xff",
    "huge map": b"\xdf\xff\xff\xff\xff",
    "huge str": b"\xdb\xff\xff\xff\xff",
    "huge bin": b"\xc6\xff\xff\xff\xff",
    "huge ext": b"\xc9\xff\xff\xff\xff\x01",
    "void dtype": msgpack.packb(_nd(type="|V8", data=b"\0" * 16), use_bin_type=True),
    "structured dtype": msgpack.packb(_nd(type=[["a", "<f4"]], kind=b"V"), use_bin_type=True),
    "str dtype": msgpack.packb(_nd(type="<U2", data=b"\0" * 16), use_bin_type=True),
    "datetime dtype": msgpack.packb(_nd(type="<M8", data=b"\0" * 16), use_bin_type=True),
    "subarray dtype": msgpack.packb(_nd(type="(2,)<f4", data=b"\0" * 16), use_bin_type=True),
    "dtype garbage": msgpack.packb(_nd(type="<f3"), use_bin_type=True),
    "dtype bytes": msgpack.packb(_nd(type=b"<f4"), use_bin_type=True),
    "shape mismatch": msgpack.packb(_nd(shape=[3]), use_bin_type=True),
    "shape huge": msgpack.packb(_nd(shape=[2**40, 2**40]), use_bin_type=True),
    "shape negative": msgpack.packb(_nd(shape=[-2]), use_bin_type=True),
    "shape float": msgpack.packb(_nd(shape=[2.0]), use_bin_type=True),
    "shape bool": msgpack.packb(_nd(shape=[True, True], data=b"\0" * 4), use_bin_type=True),
    "shape not list": msgpack.packb(_nd(shape=2), use_bin_type=True),
    "shape too many dims": msgpack.packb(_nd(shape=[1] * 65, data=b"\0" * 4), use_bin_type=True),
    "data str": msgpack.packb(_nd(data="\0" * 8), use_bin_type=True),
    "nd not bool": msgpack.packb(_nd(nd=1), use_bin_type=True),
    "extra key": msgpack.packb({**_nd(), b"more": 1}, use_bin_type=True),
    "missing data": msgpack.packb(_nd(data=...), use_bin_type=True),
    "mixed keys": msgpack.packb({**_nd(), "x": 1}, use_bin_type=True),
    "scalar wrong size": msgpack.packb({b"nd": False, b"type": "<f8", b"data": b"\0"}, use_bin_type=True),
    "bytes-keyed user map": msgpack.packb({b"a": 1}, use_bin_type=True),
    "sidecar ref without sidecar": msgpack.packb(
        {b"safetensors": "x", b"type": "<f8", b"shape": [1]}, use_bin_type=True),
}


@pytest.mark.parametrize("name", list(HOSTILE_DOCS))
def test_malformed_documents_are_corrupt(bare_pm, tmp_path, name):
    path = craft(tmp_path, bare_pm, HOSTILE_DOCS[name])
    with pytest.raises(CorruptCheckpointError) as e:
        amber.load(path, pm=bare_pm)
    assert "state.msgpck" in str(e.value) or "state.safetensors" in str(e.value)


def _safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return (len(raw) if length is None else length).to_bytes(8, "little") + raw + data


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


REF_X = {"x": {b"safetensors": "x", b"type": "<f4", b"shape": [2]}}
HOSTILE_SIDECARS = {
    "too short": b"\x01\x00",
    "header longer than file": _safetensors({"x": _entry()}, b"\0" * 8, length=10_000),
    "header over 100 MB": _safetensors({"x": _entry()}, b"\0" * 8, length=MAX_HEADER_BYTES + 1),
    "header length 2**64-1": _safetensors(b"{}", length=2**64 - 1),
    "bad json": _safetensors(b'{"x": ', b"\0" * 8),
    "not utf8": _safetensors(b'{"\xff": 1}'),
    "not an object": _safetensors(b"[1, 2]"),
    "leading space": _safetensors(b' {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                  b"\0" * 8),
    "deep json": _safetensors(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "duplicate name": _safetensors(b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},'
                                   b' "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                   b"\0" * 8),
    "offsets out of bounds": _safetensors({"x": _entry(offsets=(0, 8))}, b"\0" * 4),
    "offsets beyond data": _safetensors({"x": _entry(offsets=(8, 16))}, b"\0" * 8),
    "overlapping": _safetensors({"x": _entry(), "y": _entry(offsets=(4, 12))}, b"\0" * 12),
    "gap": _safetensors({"x": _entry(), "y": _entry(offsets=(12, 20))}, b"\0" * 20),
    "trailing bytes": _safetensors({"x": _entry()}, b"\0" * 9),
    "reversed offsets": _safetensors({"x": _entry(offsets=(8, 0))}, b"\0" * 8),
    "negative offset": _safetensors({"x": _entry(offsets=(-8, 0))}, b"\0" * 8),
    "float offsets": _safetensors({"x": _entry(offsets=(0.0, 8.0))}, b"\0" * 8),
    "size disagrees": _safetensors({"x": _entry(shape=(3,))}, b"\0" * 8),
    "unknown dtype": _safetensors({"x": _entry(dtype="F128")}, b"\0" * 8),
    "dtype differs from doc": _safetensors({"x": _entry(dtype="I32")}, b"\0" * 8),
    "shape differs from doc": _safetensors({"x": _entry(shape=(1, 2))}, b"\0" * 8),
    "missing tensor": _safetensors({"y": _entry()}, b"\0" * 8),
    "metadata not strings": _safetensors({"x": _entry(), "__metadata__": {"a": 1}}, b"\0" * 8),
    "extra entry key": _safetensors({"x": {**_entry(), "more": 1}}, b"\0" * 8),
}


@pytest.mark.parametrize("name", list(HOSTILE_SIDECARS))
def test_malformed_sidecars_are_corrupt(bare_pm, tmp_path, name):
    doc = msgpack.packb(REF_X, use_bin_type=True)
    path = craft(tmp_path, bare_pm, doc, HOSTILE_SIDECARS[name])
    with pytest.raises(CorruptCheckpointError, match="state.safetensors"):
        amber.load(path, pm=bare_pm)


def test_valid_crafted_sidecar_reads(bare_pm, tmp_path):
    data = np.array([1.5, -2.0], dtype="<f4").tobytes()
    path = craft(tmp_path, bare_pm, msgpack.packb(REF_X, use_bin_type=True),
                 _safetensors({"x": _entry()}, data))
    assert_exact(amber.load(path, pm=bare_pm), {"x": np.array([1.5, -2.0], dtype="<f4")})


def test_one_tensor_referenced_twice_is_corrupt(bare_pm, tmp_path):
    doc = msgpack.packb([REF_X, REF_X], use_bin_type=True)
    path = craft(tmp_path, bare_pm, doc, _safetensors({"x": _entry()}, b"\0" * 8))
    with pytest.raises(CorruptCheckpointError, match="twice"):
        amber.load(path, pm=bare_pm)


# -- fuzzing ---------------------------------------------------------------------------------------


FUZZ_STATE = {"a": [1, 2.5, None, True, "s", b"b"], 7: {"x": np.arange(6, dtype=">f4").reshape(2, 3)},
              "s": np.float32(1.5), "f": module_level_function, "w": np.arange(BIG, dtype=np.float64),
              "c": np.arange(BIG // 2, dtype=np.complex128)}


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    from amber.plugin_manager import get_plugin_manager

    pm = get_plugin_manager(autoload=False)
    path = amber.save(FUZZ_STATE, tmp_path_factory.mktemp("fuzz") / "ck", pm=pm)
    return pm, path, (path / "state.msgpck").read_bytes(), (path / "state.safetensors").read_bytes()


def _load_replaced(pm, path: Path, name: str, content: bytes) -> None:
    original = (path / name).read_bytes()
    try:
        (path / name).write_bytes(content)
        recompute_digests(path)
        try:
            amber.load(path, pm=pm)
        except CheckpointError:
            pass
    finally:
        (path / name).write_bytes(original)
        recompute_digests(path)


@settings(max_examples=200, deadline=5000)
@given(st.binary(max_size=300))
def test_fuzz_random_documents(fuzz_base, data):
    pm, path, _, _ = fuzz_base
    _load_replaced(pm, path, "state.msgpck", data)


mutations = st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
              st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
    min_size=1, max_size=4,
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op, pos, value in ops:
        if not buf:
            break
        i = pos % len(buf)
        if op == "flip":
            buf[i] ^= 1 << (value % 8)
        elif op == "set":
            buf[i] = value
        elif op == "insert":
            buf[i:i] = bytes([value])
        elif op == "delete":
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


@settings(max_examples=300, deadline=5000)
@given(mutations)
def test_fuzz_mutated_documents(fuzz_base, ops):
    pm, path, doc, _ = fuzz_base
    _load_replaced(pm, path, "state.msgpck", _mutate(doc, ops))


@settings(max_examples=150, deadline=5000)
@given(st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                          st.integers(min_value=0, max_value=600), st.integers(0, 255)),
                min_size=1, max_size=4))
def test_fuzz_mutated_sidecar_headers(fuzz_base, ops):
    pm, path, _, sidecar = fuzz_base
    _load_replaced(pm, path, "state.safetensors", _mutate(sidecar, ops))


# -- shared containers: msgpack stores no references -------------------------------------------------

_SHARED_NEST = """
import sys, amber
from amber.errors import UnserializableStateError
x = [1.0]
for _ in range(40):
    x = [x, x]  # 41 distinct lists; written out as a tree, 2**40 values
try:
    amber.save({"x": x}, sys.argv[1], format="msgpack")
except UnserializableStateError as e:
    print(e)
"""


def test_containers_shared_exponentially_are_refused_at_once_and_nothing_is_written(tmp_path):
    """It was written out path by path, forever (2**40 values); pickle keeps shared objects."""
    import subprocess

    target = tmp_path / "ck"
    out = subprocess.run([sys.executable, "-c", _SHARED_NEST, str(target)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "would repeat" in out.stdout and "format='pickle'" in out.stdout and "x[" in out.stdout
    assert not target.exists()


def test_a_container_shared_a_few_times_is_written_once_per_path(tmp_path):
    common = {"lr": 0.1, "w": np.arange(3.0)}
    path = amber.save({"a": common, "b": [common, common]}, tmp_path / "ck", format="msgpack")
    loaded = amber.load(path)
    assert loaded["a"]["lr"] == loaded["b"][1]["lr"] == 0.1
    np.testing.assert_array_equal(loaded["b"][0]["w"], common["w"])
