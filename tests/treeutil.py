"""Exact comparison of state trees, and hypothesis strategies that generate them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from amber.digest import format_digest, new_hasher
from amber.layout import SELF_DIGEST


def assert_tree_equal(got, want, *, tuples_as_lists: bool, path: str = "") -> None:
    """Equal in type, key order, dtype, shape and bits (NaN, -0.0 included)."""
    if isinstance(want, tuple) and tuples_as_lists:
        want = list(want)
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), f"{path}: keys {list(got)} != {list(want)}"
        for k in want:
            assert type(next(k2 for k2 in got if k2 == k)) is type(k), f"{path}: key type of {k!r}"
            assert_tree_equal(got[k], want[k], tuples_as_lists=tuples_as_lists, path=f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{path}: length"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_tree_equal(g, w, tuples_as_lists=tuples_as_lists, path=f"{path}[{i}]")
    elif isinstance(want, (np.ndarray, np.generic)):
        assert got.dtype == want.dtype and got.dtype.str == want.dtype.str, f"{path}: dtype"
        assert got.shape == want.shape, f"{path}: shape"
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), f"{path}: bits"
    elif isinstance(want, float):
        assert np.float64(got).tobytes() == np.float64(want).tobytes(), f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


_DTYPES = st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", ">i4", "|i1", "<u2", "<u8", "|u1",
                           "|b1", "<c8", "<c16"])


@st.composite
def arrays(draw):
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    arr = draw(hnp.arrays(dtype, shape))
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.T  # non-contiguous (Fortran-ordered view)
    elif arr.ndim >= 1 and arr.shape[0] > 1 and draw(st.booleans()):
        arr = arr[::2]  # strided view
    return arr


ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
leaves = (
    st.none() | st.booleans() | ints | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.binary(max_size=20) | arrays()
    | st.builds(np.float32, st.floats(width=32)) | st.builds(np.int64, st.integers(-(2**63), 2**63 - 1))
)
keys = st.text(max_size=10) | st.integers(min_value=-(2**63), max_value=2**63 - 1)
state_trees = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(keys, children, max_size=4),
    max_leaves=25,
)


def recompute_digests(checkpoint_dir: Path) -> None:
    """Rewrite every manifest's sizes and digests to match the files now on disk (bottom up)."""
    manifests = sorted(Path(checkpoint_dir).rglob("checkpoint.json"), key=lambda p: -len(p.parts))
    for manifest in manifests:
        raw = json.loads(manifest.read_text())
        for rel in raw["files"]:
            data = (manifest.parent / rel).read_bytes()
            h = new_hasher()
            h.update(data)
            raw["files"][rel] = {"size": len(data), "digest": format_digest(h)}
        write_raw_manifest(manifest, raw)


def write_raw_manifest(path: Path, raw: dict) -> None:
    """Write a (possibly malformed) manifest with a correct self-digest, as an attacker could."""
    raw = {k: v for k, v in raw.items() if k != SELF_DIGEST}
    h = new_hasher()
    h.update(json.dumps(raw, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    raw[SELF_DIGEST] = format_digest(h)
    Path(path).write_text(json.dumps(raw))


def assert_same_weights(a: dict, b: dict) -> None:
    """Two ``{policy_id: {name: array}}`` maps hold the same policies, names and bit-equal arrays."""
    assert a.keys() == b.keys()
    for pid in a:
        assert a[pid].keys() == b[pid].keys()
        for name in a[pid]:
            assert np.array_equal(a[pid][name], b[pid][name]), f"{pid}.{name}"


def tree_digest(root: Path) -> str:
    """A digest of every file's path and bytes under root (to prove nothing changed)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()
