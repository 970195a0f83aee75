"""Pickle only from a writer you trust: the user's key, signatures, `amber trust`, the CLI's --safe/--trust.

Every test uses a temporary key file (AMBER_KEY_FILE, set per session in conftest.py and per test
here): none touches the real ~/.config/amber.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber
import amber.trust
import amber.verified_io
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.cli import CliState, cli
from amber.digest import format_digest, new_hasher
from amber.errors import CorruptCheckpointError, SigningKeyError, UnsafeContentError
from amber.policy.policy import Policy
from amber.registry import Capabilities, FormatSpec
from amber.signing import key_path, load_key
from amber.utils.checkpoints import verify
from tests.treeutil import write_raw_manifest


class Marker:
    """Unpickling this creates the file ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture
def own_key(tmp_path, monkeypatch) -> Path:
    """This test's user: a fresh key file (not created yet)."""
    path = tmp_path / "home" / ".config" / "amber" / "signing.key"
    monkeypatch.setenv("AMBER_KEY_FILE", str(path))
    return path


@contextlib.contextmanager
def as_user(key_file: Path):
    """Run the block as another user: another key file."""
    old = os.environ["AMBER_KEY_FILE"]
    os.environ["AMBER_KEY_FILE"] = str(key_file)
    try:
        yield
    finally:
        os.environ["AMBER_KEY_FILE"] = old


def save_algo(path: Path, pm, *, fmt: str = "pickle", state=None, policy=None) -> Path:
    return write_checkpoint(path, type="Algorithm", state=state if state is not None else {"iteration": 3},
                            policies={"pol": policy if policy is not None else {"w": np.arange(4.0)}},
                            format=fmt, pm=pm)


def invoke(pm, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, list(args), obj=CliState(plugin_manager=pm), input=input)


def manifests(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("checkpoint.json"))]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def forge_digests(root: Path) -> None:
    """What an attacker without the key can do: recompute every manifest's sizes and digests (each in
    its own algorithm, sha256 included) and self digests, bottom up; the signature stays as it was."""
    for manifest in sorted(root.rglob("checkpoint.json"), key=lambda p: -len(p.parts)):
        raw = json.loads(manifest.read_text())
        for rel, entry in raw["files"].items():
            data = (manifest.parent / rel).read_bytes()
            algorithm = entry["digest"].split(":")[0]
            h = new_hasher(algorithm)
            h.update(data)
            raw["files"][rel] = {"size": len(data), "digest": format_digest(h, algorithm)}
        write_raw_manifest(manifest, raw)


# -- the key -------------------------------------------------------------------------------------


def test_key_is_made_private_on_the_first_signed_save(own_key, bare_pm, tmp_path):
    amber.save({"a": 1}, tmp_path / "portable", pm=bare_pm)
    read_checkpoint(tmp_path / "portable", pm=bare_pm)
    assert not own_key.exists(), "a safe format needs no key, and loading never makes one"
    path = save_algo(tmp_path / "ck", bare_pm)
    assert stat.S_IMODE(own_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(own_key.parent.stat().st_mode) == 0o700
    text = own_key.read_text()
    assert len(text.strip()) == 64 and int(text, 16) >= 0
    key = load_key()
    assert key is not None and key.path == own_key and key.key_id not in text
    top = json.loads((path / "checkpoint.json").read_text())
    assert top["signature"]["key_id"] == key.key_id and top["signature"]["scheme"] == "hmac-sha256"
    assert text.strip() not in (path / "checkpoint.json").read_text()
    for raw in manifests(path):  # every file at every level, the policy's manifest too
        assert all(e["digest"].startswith("blake3:") for e in raw["files"].values()), raw["files"]
    assert verify(path).ok, "the signature is no unlisted file"
    assert new_hasher().__class__.__name__ == "xxh3_128", "the save's digest algorithm does not leak"


def test_the_suite_never_touches_the_real_key(tmp_path_factory):
    assert key_path().is_relative_to(tmp_path_factory.getbasetemp()), "conftest.py sets AMBER_KEY_FILE"


def test_key_location_defaults_to_the_config_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("AMBER_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert key_path() == tmp_path / "xdg" / "amber" / "signing.key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_path() == tmp_path / "home" / ".config" / "amber" / "signing.key"
    monkeypatch.setenv("AMBER_KEY_FILE", str(tmp_path / "ci.key"))
    assert key_path() == tmp_path / "ci.key"


def test_concurrent_first_uses_agree_on_one_key(own_key):
    found = []
    threads = [threading.Thread(target=lambda: found.append(load_key(create=True).secret)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert [p.name for p in own_key.parent.iterdir()] == ["signing.key"]


def test_a_key_others_can_read_is_refused(own_key, bare_pm, tmp_path):
    path = save_algo(tmp_path / "ck", bare_pm)
    own_key.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_key()
    with pytest.raises(UnsafeContentError, match="chmod 600"):
        read_checkpoint(path, pm=bare_pm)
    own_key.write_text("not hex\n")
    own_key.chmod(0o600)
    with pytest.raises(SigningKeyError, match="malformed"):
        load_key()


def test_without_a_key_a_save_is_unsigned_with_a_warning(monkeypatch, bare_pm, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("AMBER_KEY_FILE", str(tmp_path / "a-file" / "signing.key"))
    with pytest.warns(UserWarning, match="saved unsigned"):
        path = save_algo(tmp_path / "ck", bare_pm)
    assert "signature" not in json.loads((path / "checkpoint.json").read_text())
    with pytest.raises(UnsafeContentError):
        read_checkpoint(path, pm=bare_pm)
    assert read_checkpoint(path, allow_pickle=True, pm=bare_pm).state == {"iteration": 3}


# -- loading ---------------------------------------------------------------------------------------


def test_own_pickle_checkpoints_load_by_default(own_key, bare_pm, tmp_path):
    path = save_algo(tmp_path / "ck", bare_pm, state={"iteration": 3, "fn": len})
    ckpt = read_checkpoint(path, pm=bare_pm)
    assert ckpt.state == {"iteration": 3, "fn": len}
    np.testing.assert_array_equal(ckpt.policies["pol"].state["w"], np.arange(4.0))
    alone = read_checkpoint(path / "policies" / "pol", pm=bare_pm)  # its algorithm's signature covers it
    np.testing.assert_array_equal(alone.state["w"], np.arange(4.0))
    amber.save({"step": 7}, tmp_path / "state", format="pickle", pm=bare_pm)
    assert amber.load(tmp_path / "state", pm=bare_pm) == {"step": 7}


def test_msgpack_loads_without_any_signature(own_key, bare_pm, tmp_path):
    path = save_algo(tmp_path / "ck", bare_pm, fmt="msgpack")
    with as_user(tmp_path / "other.key"):
        assert read_checkpoint(path, pm=bare_pm).state == {"iteration": 3}
    assert all("signature" not in raw for raw in manifests(path))
    assert all(e["digest"].startswith("xxh3_128:") for raw in manifests(path) for e in raw["files"].values())
    assert not own_key.exists() and not (tmp_path / "other.key").exists()


def test_another_users_pickle_is_refused_until_trusted(own_key, bare_pm, tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    with as_user(tmp_path / "other.key"):
        path = save_algo(tmp_path / "theirs", bare_pm, policy={"w": np.arange(4.0), "trap": Marker(marker)})
    opened = []
    real_open = amber.verified_io.open_nofollow
    monkeypatch.setattr(amber.verified_io, "open_nofollow",
                        lambda root, rel: opened.append(rel) or real_open(root, rel))
    for load in (lambda: read_checkpoint(path, pm=bare_pm), lambda: amber.load(path, pm=bare_pm),
                 lambda: Policy.from_checkpoint(path, pm=bare_pm),
                 lambda: read_checkpoint(path / "policies" / "pol", pm=bare_pm)):
        with pytest.raises(UnsafeContentError) as e:
            load()
        assert str(path) in str(e.value) and f"amber trust {path}" in str(e.value)
        assert "allow_pickle=True" in str(e.value) and "amber convert SRC DST --format msgpack" in str(e.value)
    assert not [rel for rel in opened if rel.endswith(".pkl")], "refused before any pickle byte is read"
    assert not marker.exists()
    save_algo(tmp_path / "mine", bare_pm)  # now this user has a key too: the message names both ids
    with pytest.raises(UnsafeContentError, match="signed with another key") as e:
        read_checkpoint(path, pm=bare_pm)
    assert load_key().key_id in str(e.value)
    assert read_checkpoint(path, allow_pickle=True, pm=bare_pm).state == {"iteration": 3}
    assert marker.exists(), "allow_pickle=True loads anyone's pickle"
    marker.unlink()
    state_file = path / "policies" / "pol" / "policy_state.pkl"
    inode, before = state_file.stat().st_ino, tree_bytes(path)
    result = invoke(bare_pm, "trust", "--yes", str(path))
    assert result.exit_code == 0, result.output
    assert "trusted" in result.stdout and load_key().key_id in result.stdout
    after = tree_bytes(path)
    assert [k for k in after if after[k] != before.get(k)] == ["checkpoint.json"], \
        "only the top manifest changes: its files already had BLAKE3 digests"
    assert state_file.stat().st_ino == inode, "state files are linked into place, never rewritten"
    assert verify(path).ok and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert read_checkpoint(path, pm=bare_pm).state == {"iteration": 3}
    assert marker.exists()


def test_a_policy_folder_refused_alone_gives_its_algorithms_reason(own_key, bare_pm, tmp_path):
    """A policy of an algorithm checkpoint is vouched for by the algorithm's signature: when that
    is another user's, the refusal says so (it said the policy 'carries no signature')."""
    with as_user(tmp_path / "other.key"):
        path = save_algo(tmp_path / "theirs", bare_pm)
    save_algo(tmp_path / "mine", bare_pm)  # this user's key exists now
    with pytest.raises(UnsafeContentError) as e:
        read_checkpoint(path / "policies" / "pol", pm=bare_pm)
    assert f"the algorithm checkpoint {path}" in str(e.value) and "signed with another key" in str(e.value)
    assert "carries no signature" not in str(e.value) and f"amber trust {path}" in str(e.value)


def test_trust_through_a_link_signs_the_checkpoint_it_points_to(own_key, bare_pm, tmp_path):
    """The refusal of runs/latest says `amber trust runs/latest`: that command works (it refused
    the link as 'not a checkpoint directory'), and the link stays a link."""
    with as_user(tmp_path / "other.key"):
        real = save_algo(tmp_path / "checkpoint_000001", bare_pm)
    link = tmp_path / "latest"
    link.symlink_to(real)
    with pytest.raises(UnsafeContentError, match=f"amber trust {link}"):
        read_checkpoint(link, pm=bare_pm)
    result = invoke(bare_pm, "trust", "--yes", str(link))
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == real.resolve() and verify(real).ok
    assert read_checkpoint(link, pm=bare_pm).state == {"iteration": 3}


@pytest.mark.parametrize("damage", ["policy folder gone", "unlisted file"])
def test_trust_of_an_incomplete_checkpoint_names_what_is_wrong_and_changes_nothing(
        own_key, bare_pm, tmp_path, damage):
    """It failed with a save's 'not overwriting it (choose an empty or new directory)'."""
    with as_user(tmp_path / "other.key"):
        path = save_algo(tmp_path / "ck", bare_pm)
    if damage == "policy folder gone":
        shutil.rmtree(path / "policies" / "pol")
        named = str(path / "policies" / "pol")
    else:
        (path / "notes.txt").write_text("mine")
        named = "notes.txt"
    before = tree_bytes(path)
    result = invoke(bare_pm, "trust", "--yes", str(path))
    assert result.exit_code == 2 and named in result.stderr and "nothing was changed" in result.stderr
    assert "not overwriting" not in result.stderr
    with pytest.raises(CorruptCheckpointError, match="nothing was changed"):
        amber.trust.trust_checkpoint(path, pm=bare_pm)
    assert tree_bytes(path) == before


def test_signatures_leave_every_other_byte_as_it_was(own_key, bare_pm, tmp_path):
    state, policy = {"iteration": 3, "fn": len}, {"w": np.arange(4.0)}
    mine = save_algo(tmp_path / "mine", bare_pm, state=state, policy=policy)
    with as_user(tmp_path / "other.key"):
        theirs = save_algo(tmp_path / "theirs", bare_pm, state=state, policy=policy)
    a, b = tree_bytes(mine), tree_bytes(theirs)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == ["checkpoint.json"]
    top_a, top_b = (json.loads(x["checkpoint.json"]) for x in (a, b))
    for raw in (top_a, top_b):
        for key in ("signature", "manifest_digest", "created"):
            raw.pop(key)
    assert top_a == top_b


class ThreadedFormat:
    """A third party's format that can run code, writing its file from a thread of its own."""

    @amber.hookimpl
    def amber_register_formats(self):
        def write(state, sink):
            def work():
                with sink.open() as f:
                    f.write(pickle.dumps(state))

            worker = threading.Thread(target=work)
            worker.start()
            worker.join()

        return [FormatSpec(name="threaded", extension=".thr", write=write,
                           read=lambda source: pickle.loads(source.read()),
                           capabilities=Capabilities(portable=False, safe=False, arbitrary_objects=True))]


def test_any_format_that_can_run_code_is_signed_and_pinned(own_key, bare_pm, tmp_path):
    bare_pm.register(ThreadedFormat(), name="threaded")
    path = save_algo(tmp_path / "ck", bare_pm, fmt="threaded")
    for raw in manifests(path):
        assert all(e["digest"].startswith("blake3:") for e in raw["files"].values()), raw["files"]
    assert read_checkpoint(path, pm=bare_pm).state == {"iteration": 3}
    with as_user(tmp_path / "other.key"), pytest.raises(UnsafeContentError, match="'threaded'"):
        read_checkpoint(path, pm=bare_pm)


# -- tampering -------------------------------------------------------------------------------------


def _tampered(tmp_path: Path, pm, marker: Path) -> Path:
    """This user's signed checkpoint whose policy state the attacker swapped for a payload, with
    every digest at every level and every self digest recomputed (the attacker lacks the key)."""
    path = save_algo(tmp_path / "victim", pm)
    with as_user(tmp_path / "attacker.key"):
        evil = save_algo(tmp_path / "evil", pm, policy={"w": np.arange(4.0), "trap": Marker(marker)})
    victim = path / "policies" / "pol" / "policy_state.pkl"
    victim.write_bytes((evil / "policies" / "pol" / "policy_state.pkl").read_bytes())
    forge_digests(path)
    assert verify(path).ok, "every digest matches: only the signature tells"
    return path


def test_a_tampered_pickle_is_refused_and_never_executed(own_key, bare_pm, tmp_path):
    marker = tmp_path / "executed"
    path = _tampered(tmp_path, bare_pm, marker)
    loads = (lambda: read_checkpoint(path, pm=bare_pm), lambda: amber.load(path, pm=bare_pm),
             lambda: read_checkpoint(path, policy_ids=["pol"], pm=bare_pm),
             lambda: Policy.from_checkpoint(path / "policies" / "pol", pm=bare_pm),
             lambda: read_checkpoint(path / "policies" / "pol", pm=bare_pm))
    for load in loads:
        with pytest.raises(UnsafeContentError, match="does not match its content|no signature"):
            load()
    raw = json.loads((path / "checkpoint.json").read_text())
    del raw["signature"]  # without it: as if never signed
    write_raw_manifest(path / "checkpoint.json", raw)
    with pytest.raises(UnsafeContentError, match="carries no signature"):
        read_checkpoint(path, pm=bare_pm)
    assert not marker.exists()
    read_checkpoint(path, allow_pickle=True, pm=bare_pm)  # the trap is real
    assert marker.exists()


def test_a_policy_swapped_without_its_algorithms_manifest_is_refused(own_key, bare_pm, tmp_path):
    marker = tmp_path / "executed"
    path = save_algo(tmp_path / "victim", bare_pm)
    with as_user(tmp_path / "attacker.key"):
        evil = save_algo(tmp_path / "evil", bare_pm, policy={"trap": Marker(marker)})
    for name in ("policy_state.pkl", "checkpoint.json"):  # a whole, consistent policy level
        (path / "policies" / "pol" / name).write_bytes((evil / "policies" / "pol" / name).read_bytes())
    with pytest.raises(CorruptCheckpointError, match="policies/pol/checkpoint.json"):
        read_checkpoint(path, pm=bare_pm)
    with pytest.raises(CorruptCheckpointError, match="does not match the record of its algorithm"):
        read_checkpoint(path / "policies" / "pol", pm=bare_pm)  # damage: no trust would help
    assert not marker.exists()


def test_weak_digests_under_a_signature_are_not_trusted(own_key, bare_pm, tmp_path):
    """A checkpoint of an older amber (xxh3 digests, unsigned) is refused; `amber trust` pins it."""
    path = save_algo(tmp_path / "old", bare_pm)
    for manifest in sorted(path.rglob("checkpoint.json"), key=lambda p: -len(p.parts)):
        raw = json.loads(manifest.read_text())
        raw.pop("signature", None)
        for rel in raw["files"]:
            data = (manifest.parent / rel).read_bytes()
            h = new_hasher("xxh3_128")
            h.update(data)
            raw["files"][rel] = {"size": len(data), "digest": format_digest(h)}
        write_raw_manifest(manifest, raw)
    with pytest.raises(UnsafeContentError, match="carries no signature"):
        read_checkpoint(path, pm=bare_pm)
    result = invoke(bare_pm, "trust", str(path), input="y\n")
    assert result.exit_code == 0, result.output
    assert "3 files verified (3 digests upgraded to blake3)" in result.stdout
    for raw in manifests(path):
        assert all(e["digest"].startswith("blake3:") for e in raw["files"].values())
    assert verify(path).ok
    np.testing.assert_array_equal(read_checkpoint(path, pm=bare_pm).policies["pol"].state["w"], np.arange(4.0))


# -- amber trust -----------------------------------------------------------------------------------


def test_trust_asks_first_and_changes_nothing_on_no(own_key, bare_pm, tmp_path):
    with as_user(tmp_path / "other.key"):
        path = save_algo(tmp_path / "theirs", bare_pm)
    before = tree_bytes(path)
    result = invoke(bare_pm, "trust", str(path), input="n\n")
    assert result.exit_code == 1
    assert "runs any code" in result.stderr and "Aborted" in result.stderr
    assert tree_bytes(path) == before


def test_trust_verifies_every_file_first(own_key, bare_pm, tmp_path):
    with as_user(tmp_path / "other.key"):
        path = save_algo(tmp_path / "theirs", bare_pm)
    bad = path / "policies" / "pol" / "policy_state.pkl"
    bad.write_bytes(bad.read_bytes()[:-1] + b"X")
    before = tree_bytes(path)
    result = invoke(bare_pm, "trust", "--yes", str(path))
    assert result.exit_code == 2 and str(bad) in result.stderr, result.output
    assert tree_bytes(path) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_trust_on_safe_inner_and_already_trusted_checkpoints(own_key, bare_pm, tmp_path):
    portable = save_algo(tmp_path / "portable", bare_pm, fmt="msgpack")
    result = invoke(bare_pm, "trust", "--yes", str(portable))
    assert result.exit_code == 0 and "needs no signature" in result.stdout
    mine = save_algo(tmp_path / "mine", bare_pm)
    before = tree_bytes(mine)
    result = invoke(bare_pm, "trust", str(mine))
    assert result.exit_code == 0 and "already signed" in result.stdout
    assert tree_bytes(mine) == before
    result = invoke(bare_pm, "trust", "--yes", str(mine / "policies" / "pol"))  # trusted through it
    assert result.exit_code == 0 and "nothing changed" in result.stdout and "through its algorithm" in result.stdout
    assert tree_bytes(mine) == before


# -- safe mode and the CLI flags -------------------------------------------------------------------


def test_safe_mode_refuses_even_signed_pickle(own_key, bare_pm, tmp_path, monkeypatch):
    path = save_algo(tmp_path / "ck", bare_pm)
    with pytest.raises(UnsafeContentError, match="safe loading is on"):
        read_checkpoint(path, allow_pickle=False, pm=bare_pm)
    monkeypatch.setenv("AMBER_SAFE_LOAD", "1")
    with pytest.raises(UnsafeContentError, match="AMBER_SAFE_LOAD"):
        read_checkpoint(path, pm=bare_pm)
    with pytest.raises(UnsafeContentError):
        amber.load(path, pm=bare_pm)


def test_cli_convert_and_migrate_flags(own_key, bare_pm, tmp_path):
    mine = save_algo(tmp_path / "mine", bare_pm)
    with as_user(tmp_path / "other.key"):
        theirs = save_algo(tmp_path / "theirs", bare_pm)
    assert invoke(bare_pm, "convert", str(mine), str(tmp_path / "a"), "-f", "msgpack").exit_code == 0
    result = invoke(bare_pm, "convert", str(mine), str(tmp_path / "b"), "-f", "msgpack", "--safe")
    assert result.exit_code == 2 and "safe loading is on" in result.stderr
    result = invoke(bare_pm, "convert", str(theirs), str(tmp_path / "c"), "-f", "msgpack")
    assert result.exit_code == 2 and f"amber trust {theirs}" in result.stderr
    for flag in ("--trust", "--allow-pickle"):
        assert invoke(bare_pm, "convert", str(theirs), str(tmp_path / flag), "-f", "msgpack", flag).exit_code == 0
    assert invoke(bare_pm, "migrate", str(theirs), str(tmp_path / "m")).exit_code == 2
    assert invoke(bare_pm, "migrate", str(mine), str(tmp_path / "m2"), "--safe").exit_code == 2
    result = invoke(bare_pm, "migrate", str(theirs), str(tmp_path / "m3"), "--trust")
    assert result.exit_code == 0, result.output
    assert read_checkpoint(tmp_path / "m3", pm=bare_pm).state == {"iteration": 3}, "what you write, you sign"


@pytest.fixture(scope="module")
def ppo_checkpoints(tmp_path_factory):
    """A tiny PPO saved in pickle by another user and by this one (module-wide keys)."""
    from amber.algorithms.ppo import PPOConfig

    root = tmp_path_factory.mktemp("ppo-signing")
    old = os.environ.get("AMBER_KEY_FILE")
    algo = (PPOConfig().environment("CartPole-v1")
            .training(model={"fcnet_hiddens": [4]}, train_batch_size=64, minibatch_size=32, num_epochs=1)
            .debugging(seed=0).build())
    try:
        os.environ["AMBER_KEY_FILE"] = str(root / "other.key")
        theirs = algo.save(root / "theirs", format="pickle").checkpoint.path
        os.environ["AMBER_KEY_FILE"] = str(root / "own.key")
        mine = algo.save(root / "mine", format="pickle").checkpoint.path
    finally:
        algo.stop()
        if old is not None:
            os.environ["AMBER_KEY_FILE"] = old
    return root / "own.key", Path(theirs), Path(mine)


def test_cli_evaluate_and_export_flags(ppo_checkpoints, pm, tmp_path, monkeypatch):
    own, theirs, mine = ppo_checkpoints
    monkeypatch.setenv("AMBER_KEY_FILE", str(own))
    result = invoke(pm, "evaluate", str(theirs), "--episodes", "1")
    assert result.exit_code == 2 and f"amber trust {theirs}" in result.stderr
    assert invoke(pm, "evaluate", str(mine), "--episodes", "1", "--safe").exit_code == 2
    for args in ([str(mine)], [str(theirs), "--trust"]):
        result = invoke(pm, "evaluate", *args, "--episodes", "1")
        assert result.exit_code == 0 and "return mean" in result.stdout, result.output
    result = invoke(pm, "export", str(theirs), str(tmp_path / "x"))
    assert result.exit_code == 2 and "amber trust" in result.stderr
    result = invoke(pm, "export", str(mine), str(tmp_path / "y"), "--safe")
    assert result.exit_code == 2 and "safe loading is on" in result.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    result = invoke(pm, "export", str(theirs), str(tmp_path / "z"), "--allow-pickle")
    assert result.exit_code == 0, result.output
