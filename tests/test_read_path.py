"""The quick read path gives the answers of the plain one: the manifest's JSON parsed once and
serialised once for both its own digest and the signature's MAC, duplicate keys found without a
check per object, file entries made when looked up, and a manifest opened before the checks that
only name why it could not be."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amber.digest import _no_duplicates, canonical_members, json_digest, load_json, members_digest
from amber.errors import CheckpointError
from amber.layout import MANIFEST, FileEntries, FileEntry, read_manifest
from amber.signing import SIGNATURE, SigningKey, sign, signature_problem

# Keys and strings from a small alphabet, so that duplicates are common, with the characters the
# duplicate check counts or escapes: colons, quotes, backslashes, non-ASCII, control characters.
TEXT = st.text(alphabet="ab:\"\\é\u202e\n", max_size=4)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)), max_leaves=20)


@given(st.dictionaries(TEXT, VALUES, max_size=8))
@settings(max_examples=300, deadline=None)
def test_members_join_into_the_serialisation_the_digest_is_defined_on(content):
    members = canonical_members(content)
    assert "{" + ",".join(members.values()) + "}" == json.dumps(
        content, sort_keys=True, separators=(",", ":"))
    assert members_digest(members) == json_digest(content)


# File lists as a manifest holds them, and near misses: other keys, a bool or float size, a
# non-str digest, paths and digests with characters JSON escapes.
ENTRY = st.one_of(
    st.fixed_dictionaries({"digest": TEXT | st.just("blake3:" + "0" * 64), "size": st.integers(0, 2**40)}),
    st.fixed_dictionaries({"digest": SCALARS, "size": SCALARS}),
    st.dictionaries(st.sampled_from(["digest", "size", "path"]), SCALARS, max_size=3),
    SCALARS,
)
PLAIN = st.text(alphabet="abz09/._-:~ ", min_size=1, max_size=12)
REGULAR = st.dictionaries(PLAIN, st.fixed_dictionaries({"digest": PLAIN, "size": st.integers(0, 2**70)}),
                          min_size=1, max_size=6)
FILE_LISTS = REGULAR | st.builds(lambda regular, odd: {**regular, **odd}, REGULAR,
                                 st.dictionaries(TEXT | PLAIN, ENTRY, max_size=2))


@given(FILE_LISTS)
@settings(max_examples=300, deadline=None)
def test_a_file_list_written_directly_is_what_the_encoder_writes(files):
    # the manifest's file list skips the JSON encoder when nothing in it needs escaping
    members = canonical_members({"files": files, "type": "Algorithm"})
    assert members["files"] == '"files":' + json.dumps(files, sort_keys=True, separators=(",", ":"))


# Objects as lists of pairs, written as they are: a key may come twice, at any depth.
PAIRS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(lambda items: ("list", items)),
    st.lists(st.tuples(st.sampled_from(["a", "b", "a:b", "é", "\\u0061"]), inner), max_size=4)
    .map(lambda pairs: ("object", pairs))), max_leaves=20)


def _write(node: Any, ascii_only: bool) -> str:
    if isinstance(node, tuple) and node[0] == "list":
        return "[" + ", ".join(_write(v, ascii_only) for v in node[1]) + "]"
    if isinstance(node, tuple):
        # a key written raw (so "\\u0061" is the escape of "a"), as a hand-edited file may
        return "{" + ", ".join(f'"{k}": {_write(v, ascii_only)}' for k, v in node[1]) + "}"
    return json.dumps(node, ensure_ascii=ascii_only)


def _checked(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        return f"{type(e).__name__}: {e}"


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "a:b", "é"]), PAIRS), max_size=5),
       st.booleans(), st.sampled_from(["", " x", "]", '\n"c":1']))
@settings(max_examples=500, deadline=None)
def test_duplicate_keys_are_refused_as_the_checked_parse_refuses_them(pairs, ascii_only, tail):
    text = _write(("object", pairs), ascii_only) + tail
    want = _checked(text)
    try:
        value, members = load_json(text)
    except ValueError as e:
        assert f"{type(e).__name__}: {e}" == want
        return
    assert json.dumps(value) == json.dumps(want)  # NaN compares unequal to itself; its text does not
    if members is not None:
        assert members == canonical_members(value)


def test_a_dropped_duplicate_is_found_whatever_colons_the_strings_hold():
    for text in ['{"a": "x:y", "a": "z"}', '{"a": 1, "b": "\\u003a", "a": 2}',
                 '{"k": {"a": {":": ":"}, "a": 0}}', '[{"a": 1}, {"b": 2, "b": 3}]']:
        with pytest.raises(ValueError, match="duplicate key"):
            load_json(text)


KEY = SigningKey(Path("signing.key"), bytes(range(32)))
MANIFESTS = st.fixed_dictionaries(
    {"type": st.just("Algorithm"), "files": st.dictionaries(TEXT, VALUES, max_size=4)},
    optional={"metadata": st.dictionaries(TEXT, TEXT, max_size=3), "zz": VALUES, "rng": VALUES})


@given(MANIFESTS, st.sampled_from([None, "metadata", "files", "zz"]))
@settings(max_examples=200, deadline=None)
def test_the_mac_from_the_members_is_the_mac_of_the_content(content, tamper):
    raw = {**content, SIGNATURE: sign(content, KEY)}
    if tamper is not None:
        raw[tamper] = {"changed": True}
    members = canonical_members(raw)
    assert signature_problem(raw, KEY, members=members) == signature_problem(raw, KEY)
    assert (signature_problem(raw, KEY, members=members) is None) == (tamper is None)


def test_file_entries_read_like_the_dict_they_replace():
    listed = {"b.bin": {"size": 3, "digest": "d1"}, "a.bin": {"size": 0, "digest": "d2", "x": 1}}
    want = {rel: FileEntry(e["size"], e["digest"]) for rel, e in listed.items()}
    files = FileEntries(listed)
    assert files == want and list(files) == list(want) and len(files) == 2
    assert files["a.bin"] == FileEntry(0, "d2") and files.get("c") is None and "b.bin" in files
    assert list(files.items()) == list(want.items())
    with pytest.raises(KeyError):
        files["c"]  # noqa: B018


@pytest.fixture()
def saved(tmp_path):
    from amber.checkpoint_write import write_checkpoint  # noqa: PLC0415 - only here

    path = tmp_path / "ckpt"
    write_checkpoint(path, type="Algorithm", state={"step": 1}, format="msgpack",
                     policies={"p0": {"w": [1.0]}, "p1": {"w": [2.0]}})
    return path


def _break(where: Path, how: str) -> None:
    if how == "missing":
        shutil.rmtree(where) if where.is_dir() else where.unlink()
    elif how == "link":
        real = where.with_name(where.name + ".real")
        where.rename(real)
        where.symlink_to(real.name, target_is_directory=real.is_dir())
    elif how == "file":
        shutil.rmtree(where)
        where.write_text("x")
    elif how == "empty":
        shutil.rmtree(where)
        where.mkdir()
    elif how == "fifo":
        where.unlink()
        os.mkfifo(where)
    elif how == "dir":
        where.unlink()
        where.mkdir()


# What each damage is reported as: the messages the checks always gave, in their order.
POLICY_CASES = [
    ("policies", "missing", "{root}/policies: is missing"),
    ("policies/p0", "link", "{root}/policies/p0: is a symbolic link; checkpoints may not contain links"),
    ("policies/p0", "file", "{root}/policies/p0: is a regular file, not a directory"),
    ("policies/p0", "empty",
     "{root}/policies/p0/checkpoint.json: is missing (the directory holds checkpoint files)"),
    ("policies/p0/checkpoint.json", "link",
     "{root}/policies/p0/checkpoint.json: is a symbolic link; checkpoints may not contain links"),
    ("policies/p0/checkpoint.json", "fifo", "{root}/policies/p0/checkpoint.json: is a FIFO (named "
     "pipe), not a regular file; refused before reading"),
    ("policies/p0/checkpoint.json", "dir",
     "{root}/policies/p0/checkpoint.json: is a directory, not a regular file; refused before reading"),
]


@pytest.mark.parametrize(("rel", "how", "message"), POLICY_CASES)
def test_a_policy_manifest_that_cannot_be_opened_is_named_as_before(saved, rel, how, message):
    entry = read_manifest(saved).files[f"policies/p0/{MANIFEST}"]
    _break(saved / rel, how)
    with pytest.raises(CheckpointError) as e:
        read_manifest(saved / "policies" / "p0", expected=entry, root=saved)
    assert str(e.value) == message.format(root=saved)


TOP_CASES = [
    ("", "missing", "NotACheckpointError", "{root} is not a checkpoint directory (it does not exist)"),
    ("", "file", "NotACheckpointError", "{root} is not a checkpoint directory"),
    ("", "empty", "NotACheckpointError", "{root} is not an amber checkpoint: no checkpoint.json"),
    ("checkpoint.json", "missing", "CorruptCheckpointError",
     "{root}/checkpoint.json: is missing (the directory holds checkpoint files)"),
    ("checkpoint.json", "link", "CorruptCheckpointError",
     "{root}/checkpoint.json: is a symbolic link; checkpoints may not contain links"),
    ("checkpoint.json", "dir", "CorruptCheckpointError",
     "{root}/checkpoint.json: is a directory, not a regular file; refused before reading"),
]


@pytest.mark.parametrize(("rel", "how", "kind", "message"), TOP_CASES)
def test_a_top_manifest_that_cannot_be_opened_is_named_as_before(saved, rel, how, kind, message):
    _break(saved / rel if rel else saved, how)
    with pytest.raises(CheckpointError) as e:
        read_manifest(saved)
    assert type(e.value).__name__ == kind
    assert str(e.value) == message.format(root=saved)


def test_a_linked_checkpoint_directory_is_read(saved, tmp_path):
    (tmp_path / "alias").symlink_to(saved, target_is_directory=True)
    assert read_manifest(tmp_path / "alias").policy_ids == ["p0", "p1"]
