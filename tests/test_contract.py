"""The contract every format meets: in-tree and third-party alike.

Parametrised over CONTRACT_FORMATS; a test fails if a registered format is
missing from it, so no format ships without this suite.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amber
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.errors import (
    CheckpointError,
    CorruptCheckpointError,
    UnsafeContentError,
    UnsupportedVersionError,
)
from amber.registry import get_registry

from .treeutil import assert_tree_equal, recompute_digests, state_trees, write_raw_manifest

CONTRACT_FORMATS = ["pickle", "msgpack", "npz"]


@pytest.fixture(params=CONTRACT_FORMATS)
def fmt(request, contract_pm):
    return request.param


def test_every_registered_format_is_under_contract(contract_pm):
    assert sorted(get_registry(contract_pm).names()) == sorted(CONTRACT_FORMATS)


def _portable(pm, fmt: str) -> bool:
    return not get_registry(pm).get(fmt).capabilities.arbitrary_objects


# -- round trips ---------------------------------------------------------------------------

EDGE_ARRAYS = {
    "zero_d": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.int16),
    "strided": np.arange(20, dtype=np.float64)[::3],
    "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    "transposed": np.arange(12, dtype=np.uint8).reshape(3, 4).T,
    "big_endian": np.arange(6, dtype=">f4").reshape(2, 3),
    "big_endian_int": np.array([1, -2, 3], dtype=">i8"),
    "bool": np.array([True, False, True]),
    "complex": np.array([1 + 2j, np.nan - 0j], dtype=np.complex64),
    "specials": np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324], dtype=np.float64),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "half": np.array([1.5, -0.0, np.inf], dtype=np.float16),
    "large": np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32),
}
EDGE_TREE = {
    "arrays": EDGE_ARRAYS,
    "scalars": {"none": None, "t": True, "f": False, "i": -7, "big": 2**64 - 1, "neg": -(2**63),
                "float": 1.0, "nan": float("nan"), "inf": float("-inf"), "negzero": -0.0,
                "str": "héllo", "bytes": b"\x00\xff", "np_f32": np.float32(1.25), "np_i64": np.int64(-3)},
    "order": {"z": 1, "a": 2, "m": 3},
    "int_keys": {0: "agent0", 5: "agent5", -1: "neg"},
    "nested": [[1, [2, [3.0, {"deep": []}]]], {}, ()],
}


def test_edge_cases_round_trip_exactly(contract_pm, fmt, tmp_path):
    path = amber.save(EDGE_TREE, tmp_path / "ck", format=fmt, pm=contract_pm)
    got = amber.load(path, pm=contract_pm)
    assert_tree_equal(got, EDGE_TREE, tuples_as_lists=_portable(contract_pm, fmt))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=state_trees)
def test_any_state_tree_round_trips(contract_pm, fmt, tmp_path_factory, tree):
    path = amber.save({"root": tree}, tmp_path_factory.mktemp("rt") / "ck", format=fmt, pm=contract_pm)
    assert_tree_equal(amber.load(path, pm=contract_pm), {"root": tree},
                      tuples_as_lists=_portable(contract_pm, fmt))


def test_algorithm_checkpoint_round_trips(contract_pm, fmt, tmp_path):
    policies = {"pol1": {"weights": {"w": np.ones((4, 4), np.float32)}, "t": 3},
                "pol2": {"weights": {"w": np.zeros(2)}, "t": 4}}
    path = write_checkpoint(tmp_path / "ck", type="Algorithm", state={"iteration": 2}, format=fmt,
                            policies=policies, pm=contract_pm)
    ckpt = read_checkpoint(path, pm=contract_pm)
    assert ckpt.state == {"iteration": 2} and list(ckpt.policies) == ["pol1", "pol2"]
    for pid, want in policies.items():
        assert_tree_equal(ckpt.policies[pid].state, want, tuples_as_lists=True)


# -- corruption ------------------------------------------------------------------------------


def _checkpoint(pm, fmt, tmp_path) -> Path:
    big = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)  # > sidecar threshold
    return write_checkpoint(
        tmp_path / "ck", type="Algorithm", state={"iteration": 1, "rng": np.arange(8)}, format=fmt,
        policies={"pol1": {"w": big, "b": np.ones(3)}, "pol2": {"w": big[:10].copy()}}, pm=pm,
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _damages(data: bytes, rng: random.Random):
    n = len(data)
    for cut in sorted({0, n // 2, rng.randrange(n), n - 1}):
        yield f"truncated at {cut}", data[:cut]
    for _ in range(3):
        i = rng.randrange(n)
        yield f"byte {i} flipped", data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
    yield "zero-filled", bytes(n)
    yield "deleted", None


def test_every_damaged_file_is_named(contract_pm, fmt, tmp_path):
    original = _checkpoint(contract_pm, fmt, tmp_path)
    rng = random.Random(fmt)
    for victim in _files(original):
        rel = victim.relative_to(original)
        for what, content in _damages(victim.read_bytes(), rng):
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(original, work)
            target = work / rel
            if content is None:
                target.unlink()
            else:
                target.write_bytes(content)
            with pytest.raises(CorruptCheckpointError) as e:
                read_checkpoint(work, allow_pickle=True, pm=contract_pm)
            assert str(target) in str(e.value) or str(target.parent / "checkpoint.json") in str(
                e.value), f"{rel} {what}: {e.value}"


def test_unlisted_files_are_ignored_by_readers(contract_pm, fmt, tmp_path):
    path = _checkpoint(contract_pm, fmt, tmp_path)
    (path / "stray.bin").write_bytes(b"x")
    (path / "policies" / "ghost").mkdir()
    assert list(read_checkpoint(path, allow_pickle=True, pm=contract_pm).policies) == ["pol1", "pol2"]


# -- malformed manifests ---------------------------------------------------------------------


def _edit(path: Path, edit) -> None:
    raw = json.loads((path / "checkpoint.json").read_text())
    edit(raw)
    write_raw_manifest(path / "checkpoint.json", raw)


MANIFEST_EDITS = {
    "type is a number": lambda r: r.update(type=3),
    "unknown type": lambda r: r.update(type="Robot"),
    "files is a list": lambda r: r.update(files=[]),
    "size is a string": lambda r: r["files"][r["state_file"]].update(size="10"),
    "size is negative": lambda r: r["files"][r["state_file"]].update(size=-1),
    "digest malformed": lambda r: r["files"][r["state_file"]].update(digest="md5:abc"),
    "state_file unlisted": lambda r: r.update(state_file="other.bin"),
    "policy_ids not a list": lambda r: r.update(policy_ids="pol1"),
    "format missing": lambda r: r.pop("format"),
    "metadata not strings": lambda r: r.update(metadata={"a": 1}),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS), ids=list(MANIFEST_EDITS))
def test_malformed_manifest_is_corrupt(contract_pm, fmt, tmp_path, edit):
    path = _checkpoint(contract_pm, fmt, tmp_path)
    _edit(path, MANIFEST_EDITS[edit])
    with pytest.raises(CorruptCheckpointError, match="checkpoint.json"):
        read_checkpoint(path, allow_pickle=True, pm=contract_pm)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"x"', "\xff\xfe", '{"a": 1, "a": 2}'])
def test_unparseable_manifest_is_corrupt(contract_pm, fmt, tmp_path, text):
    path = _checkpoint(contract_pm, fmt, tmp_path)
    (path / "checkpoint.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CorruptCheckpointError, match="checkpoint.json"):
        read_checkpoint(path, allow_pickle=True, pm=contract_pm)


def test_duplicate_keys_in_manifest_are_corrupt(contract_pm, fmt, tmp_path):
    path = _checkpoint(contract_pm, fmt, tmp_path)
    text = (path / "checkpoint.json").read_text()
    (path / "checkpoint.json").write_text(text.replace('"type": "Algorithm",', '"type": "Algorithm", "type": "Policy",', 1))
    with pytest.raises(CorruptCheckpointError, match="duplicate key 'type'"):
        read_checkpoint(path, allow_pickle=True, pm=contract_pm)


def test_future_version_is_refused(contract_pm, fmt, tmp_path):
    path = _checkpoint(contract_pm, fmt, tmp_path)
    _edit(path, lambda r: r.update(checkpoint_version="99.0"))
    with pytest.raises(UnsupportedVersionError, match="'99.0'.*upgrade amber"):
        read_checkpoint(path, allow_pickle=True, pm=contract_pm)


# -- hostile content ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_files(marker: Path) -> dict[str, bytes]:
    payload = pickle.dumps(_Payload(marker))
    obj_map = {b"nd": True, b"type": "|O", b"kind": b"", b"shape": [1], b"data": payload}
    import io
    import zipfile

    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as z:
        arr = np.empty(1, dtype=object)
        arr[0] = _Payload(marker)
        member = io.BytesIO()
        np.save(member, arr, allow_pickle=True)
        z.writestr("w.npy", member.getvalue())
        z.writestr("__tree__.npy", member.getvalue())
    return {
        "pickle stream": payload,
        "msgpack object-dtype map": msgpack.packb({"w": obj_map}, use_bin_type=True),
        "msgpack bare object map": msgpack.packb(obj_map, use_bin_type=True),
        "npz with object array": npz.getvalue(),
    }


def test_pickle_checkpoint_refused_in_safe_mode_without_running_it(contract_pm, tmp_path):
    marker = tmp_path / "pwned"
    path = write_checkpoint(tmp_path / "ck", type="Algorithm", state={"x": _Payload(marker)},
                            format="pickle", policies={"p": {"y": _Payload(marker)}}, pm=contract_pm)
    for kwargs in ({"allow_pickle": False}, {"policy_ids": ["p"], "allow_pickle": False}):
        with pytest.raises(UnsafeContentError):
            read_checkpoint(path, pm=contract_pm, **kwargs)
    assert not marker.exists()


def test_safe_formats_never_run_hostile_content(contract_pm, fmt, tmp_path):
    spec = get_registry(contract_pm).get(fmt)
    if not spec.capabilities.safe:
        pytest.skip("covered by the safe-mode refusal test")
    marker = tmp_path / "pwned"
    original = _checkpoint(contract_pm, fmt, tmp_path)
    for what, content in _hostile_files(marker).items():
        for victim in [f for f in _files(original) if f.name != "checkpoint.json"]:
            work = tmp_path / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(original, work)
            (work / victim.relative_to(original)).write_bytes(content)
            recompute_digests(work)  # so the reader itself faces the content
            with pytest.raises(CheckpointError):
                read_checkpoint(work, allow_pickle=False, pm=contract_pm)
            assert not marker.exists(), f"{what} in {victim.name} ran code"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_state_files_fail_cleanly(contract_pm, fmt, tmp_path_factory, data):
    spec = get_registry(contract_pm).get(fmt)
    if not spec.capabilities.safe:
        return  # pickle is only ever read from trusted sources, after its digest matched
    base = tmp_path_factory.mktemp("fz")
    path = amber.save({"a": [1, 2.5, "x"], "w": np.arange(6, dtype=np.int32)}, base / "ck",
                      format=fmt, pm=contract_pm)
    victim = path / f"state{spec.extension}"
    blob = bytearray(victim.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "insert", "cut", "replace"]))
        i = data.draw(st.integers(0, max(len(blob) - 1, 0)))
        if op == "flip" and blob:
            blob[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            blob[i:i] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "cut":
            del blob[i : i + data.draw(st.integers(1, 16))]
        else:
            blob = bytearray(data.draw(st.binary(max_size=64)))
    victim.write_bytes(bytes(blob))
    recompute_digests(path)
    try:
        amber.load(path, pm=contract_pm)
    except CheckpointError:
        pass


# -- crashes ------------------------------------------------------------------------------------

SAVER = """
import sys, numpy as np, amber
from amber.checkpoint import write_checkpoint
fmt, path = sys.argv[1], sys.argv[2]
rng = np.random.default_rng()
print("ready", flush=True)
i = 0
while True:
    i += 1
    w = np.full(200_000, i, dtype=np.float32)
    write_checkpoint(path, type="Algorithm", state={"i": i}, format=fmt,
                     policies={"a": {"w": w}, "b": {"w": w[:1000].copy(), "i": i}})
"""


def test_kill_9_at_any_instant_leaves_a_loadable_checkpoint(contract_pm, fmt, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    trials = int(os.environ.get("AMBER_KILL_TRIALS", "20"))
    rng = random.Random(42)
    path = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    seen = set()
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, fmt, str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not path.exists():
            continue
        ckpt = read_checkpoint(path, allow_pickle=True, pm=contract_pm)
        i = ckpt.state["i"]
        assert ckpt.policies["b"].state["i"] == i
        assert (ckpt.policies["a"].state["w"] == i).all()
        seen.add(i)
    leftovers = [(p.name, sorted(q.name for q in p.iterdir()) if p.is_dir() else "file")
                 for p in tmp_path.iterdir() if p.name != "ck"]
    amber.save({"x": 1}, tmp_path / "other", pm=contract_pm)  # a later save cleans up after crashes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "other"], leftovers
    assert seen, "no trial ever committed a checkpoint"


def test_strided_arrays_of_either_byte_order_round_trip(contract_pm, fmt, tmp_path):
    """numpy pickles a strided big-endian array with the native byte order: amber must not."""
    tree = {"be": np.arange(6, dtype=">f4")[::2], "le": np.arange(6, dtype="<i4")[::3],
            "fortran": np.arange(6, dtype=">f8").reshape(2, 3).T}
    path = amber.save(tree, tmp_path / "ck", format=fmt, pm=contract_pm)
    assert_tree_equal(amber.load(path, pm=contract_pm), tree, tuples_as_lists=_portable(contract_pm, fmt))
