"""A large manifest is checked all at once (amber.layout): it refuses exactly what checking each
entry refuses, with the same error, and a subset restore builds only the policies asked for."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from amber import components
from amber.digest import all_well_formed, is_cryptographic, parse_digest
from amber.errors import CheckpointError, CorruptCheckpointError
from amber.layout import MANIFEST, FileEntry, read_manifest
from amber.signing import weak_digest

from .treeutil import write_raw_manifest

XXH = "xxh3_128:" + "0123456789abcdef" * 2
B3 = "blake3:" + "0123456789abcdef" * 4


def _manifest(n: int = 100, digest: str = XXH) -> dict[str, Any]:
    """An Algorithm manifest of ``n`` policies (two files each), as a save writes it."""
    ids = [f"p{i}" for i in range(n)]
    files = {"algorithm_state.msgpck": {"size": 10, "digest": digest}}
    for pid in ids:
        files[f"policies/{pid}/{MANIFEST}"] = {"size": 500, "digest": digest}
        files[f"policies/{pid}/policy_state.msgpck"] = {"size": 4000, "digest": digest}
    return {"type": "Algorithm", "checkpoint_version": "2.2", "format": "msgpack",
            "state_file": "algorithm_state.msgpck", "policy_ids": ids, "files": files}


def _read(tmp_path: Path, raw: dict[str, Any]) -> Any:
    write_raw_manifest(tmp_path / MANIFEST, raw)
    return read_manifest(tmp_path)


def test_a_large_manifest_reads_every_entry(tmp_path):
    raw = _manifest()
    manifest = _read(tmp_path, raw)
    assert manifest.files == {rel: FileEntry(e["size"], e["digest"]) for rel, e in raw["files"].items()}
    assert list(manifest.files) == list(raw["files"])
    assert manifest.policy_ids == raw["policy_ids"]


BAD_PATHS = ["../x", "/abs", "a//b", "a/./b", "a/../b", "a/", "a/.", "a/..", "./a", ".", "..", "",
             "a\\b", "a\x00b", "a\nb", "evil\u202egnp", "a\u200bb", "\ud800", MANIFEST]


@pytest.mark.parametrize("bad", BAD_PATHS)
@pytest.mark.parametrize("where", [0, 77, -1])
def test_one_bad_path_among_many_is_refused_by_name(tmp_path, bad, where):
    raw = _manifest()
    items = list(raw["files"].items())
    items.insert(where if where >= 0 else len(items), (bad, {"size": 1, "digest": XXH}))
    raw["files"] = dict(items)
    with pytest.raises(CorruptCheckpointError) as e:
        _read(tmp_path, raw)
    assert str(tmp_path / MANIFEST) in str(e.value)
    assert repr(bad) in str(e.value)


BAD_ENTRIES = [
    None, [], "x", {"size": 1}, {"digest": XXH}, {"size": -1, "digest": XXH},
    {"size": True, "digest": XXH}, {"size": 1.0, "digest": XXH}, {"size": "1", "digest": XXH},
    {"size": 1, "digest": XXH.upper()}, {"size": 1, "digest": XXH[:-1]}, {"size": 1, "digest": XXH + "0"},
    {"size": 1, "digest": "md5:" + "0" * 32}, {"size": 1, "digest": XXH + "\n" + XXH},
    {"size": 1, "digest": None}, {"size": 1, "digest": 7}, {"size": 1, "digest": ""},
]


@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=repr)
def test_one_malformed_entry_among_many_is_refused_by_name(tmp_path, entry):
    raw = _manifest()
    raw["files"]["policies/p42/extra.bin"] = entry
    with pytest.raises(CorruptCheckpointError, match=r"malformed entry for 'policies/p42/extra\.bin'"):
        _read(tmp_path, raw)


@pytest.mark.parametrize("bad", [".", "..", "a/b", "a\\b", "", "x" * 129, "p\u202e1", "p\x1b1", 7, None,
                                 "政策" * 43])
def test_one_bad_policy_id_among_many_is_refused(tmp_path, bad):
    raw = _manifest()
    raw["policy_ids"].insert(50, bad)
    with pytest.raises(CorruptCheckpointError, match="policy id"):
        _read(tmp_path, raw)


LONG_IN_BYTES = "政策" * 43  # 86 characters, 258 bytes in UTF-8: over a file name's 255


def test_an_id_over_255_bytes_in_utf8_is_refused_like_one_over_128_characters(tmp_path):
    """Such an id passed the check (at most 128 characters) and failed at save with "File name too
    long", naming no id; a crafted manifest listing one is refused too, by name."""
    from amber.checkpoint import write_checkpoint
    from amber.errors import InvalidIdError
    from amber.layout import check_id

    assert check_id("政" * 85) == "政" * 85  # 255 bytes: allowed
    with pytest.raises(InvalidIdError, match="longer than 255 bytes"):
        check_id(LONG_IN_BYTES)
    with pytest.raises(InvalidIdError, match="longer than 255 bytes") as e:
        write_checkpoint(tmp_path / "ck", type="Algorithm", state={}, format="msgpack",
                         policies={LONG_IN_BYTES: {"w": 1}, "ok": {"w": 2}})
    assert LONG_IN_BYTES in str(e.value) and not (tmp_path / "ck").exists()
    write_checkpoint(tmp_path / "ck", type="Algorithm", state={}, format="msgpack", policies={"政" * 85: {}})
    raw = _manifest(n=1)
    raw["policy_ids"] = [LONG_IN_BYTES]
    with pytest.raises(CorruptCheckpointError, match="longer than 255 bytes") as e:
        _read(tmp_path, raw)
    assert LONG_IN_BYTES in str(e.value)


def test_a_policy_without_its_manifest_among_many_is_refused(tmp_path):
    raw = _manifest()
    del raw["files"][f"policies/p63/{MANIFEST}"]
    with pytest.raises(CorruptCheckpointError, match="'p63' has no checkpoint.json"):
        _read(tmp_path, raw)


@pytest.mark.parametrize("where", ["algorithm_state.msgpck", "policies/p0/policy_state.msgpck",
                                   "policies/p99/policy_state.msgpck"])
def test_one_weak_digest_among_many_cryptographic_ones_is_named(tmp_path, where):
    raw = _manifest(digest=B3)
    assert weak_digest(_read(tmp_path, raw)) is None
    raw["files"][where]["digest"] = XXH
    found = weak_digest(_read(tmp_path, raw))
    assert found is not None and where in found and "xxh3_128" in found


def test_visible_unusual_names_are_kept(tmp_path):
    raw = _manifest(3)
    odd = ["a b/c", "...", "..a/b..", "é/ü.bin", "x\u00a0y"]  # a no-break space shows as itself
    for rel in odd:
        raw["files"][rel] = {"size": 0, "digest": XXH}
    assert set(odd) <= set(_read(tmp_path, raw).files)


def test_duplicate_keys_are_refused(tmp_path):
    raw = _manifest(2)
    write_raw_manifest(tmp_path / MANIFEST, raw)
    text = (tmp_path / MANIFEST).read_text()
    (tmp_path / MANIFEST).write_text(text.replace('"type": "Algorithm"', '"type": "Algorithm", "type": "Policy"'))
    with pytest.raises(CorruptCheckpointError, match="duplicate key 'type'"):
        read_manifest(tmp_path)


def test_all_well_formed_answers_as_parse_digest_does():
    rng = random.Random(0)
    good = [XXH, B3, "sha256:" + "a" * 64, "blake2b:" + "f" * 128]
    alphabet = "0123456789abcdefABX:\n _"
    samples: list[object] = [*good, None, 3, "", ":", "xxh3_128:", XXH + "\n"]
    for _ in range(400):  # mutations of good digests: one character changed, added or removed
        d = list(rng.choice(good))
        i = rng.randrange(len(d))
        op = rng.randrange(3)
        if op == 0:
            d[i] = rng.choice(alphabet)
        elif op == 1:
            d.insert(i, rng.choice(alphabet))
        else:
            del d[i]
        samples.append("".join(d))
    for value in samples:
        assert all_well_formed([XXH, value]) == (parse_digest(value) is not None), repr(value)
        assert all_well_formed([B3, value], cryptographic=True) == is_cryptographic(value), repr(value)
    assert all_well_formed([]) and all_well_formed(good) and not all_well_formed(good, cryptographic=True)
    assert not all_well_formed([XXH + "\n" + XXH])  # two digests in one string are not one digest


def test_many_digests_of_one_algorithm_are_each_checked():
    # the usual manifest: many digests of one algorithm, checked at once; a character moved from
    # one digest to another, or a second prefix inside one, is still found
    rng = random.Random(1)
    for algorithm, width in (("blake3", 64), ("xxh3_128", 32)):
        for _ in range(300):
            digests = [f"{algorithm}:" + "".join(rng.choices("0123456789abcdef", k=width))
                       for _ in range(rng.randint(1, 6))]
            i, j = rng.randrange(len(digests)), rng.randrange(len(digests))
            how = rng.randrange(5)
            if how == 0:  # one character changed
                k = rng.randrange(len(digests[i]))
                digests[i] = digests[i][:k] + rng.choice("0123456789abcdefABX:\n _") + digests[i][k + 1:]
            elif how == 1:  # one character moved from one digest to another
                digests[i], digests[j] = digests[i][:-1], digests[j] + digests[i][-1]
            elif how == 2:  # a prefix inside a digest, its length kept
                digests[i] = digests[i][:-(len(algorithm) + 1)] + f"{algorithm}:"
            elif how == 3:  # another algorithm's digest among them
                digests[i] = B3 if algorithm != "blake3" else XXH
            expected = all(parse_digest(d) is not None for d in digests)
            assert all_well_formed(digests) == expected, digests
            assert all_well_formed(digests, cryptographic=True) == all(map(is_cryptographic, digests)), digests


class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def get_state(self) -> int:
        return self.value

    def set_state(self, state: int) -> None:
        if state < 0:
            raise ValueError("negative")
        self.value = state


def test_restore_without_rollback_applies_and_names_the_failing_component(bare_pm):
    a, b = _Counter(), _Counter()
    components.restore(None, {"a": a, "b": b}, {"a": 3, "b": 4}, pm=bare_pm, rollback=False)
    assert (a.value, b.value) == (3, 4)
    with pytest.raises(CheckpointError, match="'b'"):
        components.restore(None, {"a": a, "b": b}, {"a": 5, "b": -1}, pm=bare_pm, rollback=False)
    with pytest.raises(CheckpointError, match="'b'"):  # with rollback, everything is put back
        components.restore(None, {"a": a, "b": b}, {"a": 6, "b": -1}, pm=bare_pm)
    assert (a.value, b.value) == (5, 4)
