"""Signatures: which checkpoints in a format that can run code this user trusts.

A format whose ``capabilities.safe`` is False runs code when it is read. Such
a checkpoint is loaded by default (``allow_pickle=None``) only when its top
``checkpoint.json`` carries a signature made with the user's secret key:
what this user saved, or marked as trusted with ``amber trust``
(:mod:`amber.trust`). See docs/security.md for the whole trust model.

- The signature is an HMAC-SHA256, keyed with the user's key, over the top
  manifest (all of it but the signature, and its own ``manifest_digest``),
  stored in it under ``"signature"`` with the key's id.
- Such checkpoints are written with BLAKE3 digests (:data:`SIGNED_DIGEST`;
  sha256 up to checkpoint version 2.1, still read) for every file at every
  level, the policies' manifests included, so the top manifest fixes every
  byte; the verified read checks each file against its digest in the same
  pass that reads it, so trusting costs no extra pass.
  A signed manifest that lists a non-cryptographic digest is not trusted.
- Only the top manifest changes with the key: every other file of a checkpoint
  is the same whoever saves it. Formats that cannot run code are not signed:
  they load without trust, and a cryptographic hash would slow every save
  and load for nothing.
- The key is 32 random bytes (:mod:`secrets`), written as 64 hex digits in a
  file only its owner may read or write (mode 0600, in a 0700 directory):
  ``$AMBER_KEY_FILE``, else ``$XDG_CONFIG_HOME/amber/signing.key``, else
  ``~/.config/amber/signing.key``. It is created on the first save that needs
  it; loading never creates it.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amber.digest import is_cryptographic, parse_digest
from amber.durable import describe, fsync_dir
from amber.errors import CheckpointError, CorruptCheckpointError, NotACheckpointError, SigningKeyError, warn
from amber.layout import MANIFEST, SELF_DIGEST, Manifest, read_manifest

__all__ = [
    "KEY_ENV",
    "SIGNATURE",
    "SIGNED_DIGEST",
    "SigningKey",
    "check_trust",
    "containing_algorithm",
    "key_for_saving",
    "key_path",
    "load_key",
    "policy_manifest",
    "sign",
    "signature_problem",
    "weak_digest",
]

#: The environment variable naming the key file (clusters, CI).
KEY_ENV = "AMBER_KEY_FILE"
#: The key of the signature in the top checkpoint.json.
SIGNATURE = "signature"
#: The digest algorithm of every file of a signed checkpoint.
SIGNED_DIGEST = "blake3"
SCHEME = "hmac-sha256"
KEY_BYTES = 32
_MAC_CONTEXT = b"amber checkpoint signature v1\0"
_ID_CONTEXT = b"amber key id v1"
_MAX_KEY_FILE = 4096
#: What a key file holds, less white space around it.
_KEY_TEXT = re.compile(f"[0-9a-fA-F]{{{2 * KEY_BYTES}}}")


@dataclass(frozen=True)
class SigningKey:
    """The user's secret key and where it was read from."""

    path: Path
    secret: bytes = field(repr=False)

    @functools.cached_property
    def key_id(self) -> str:
        """A public name of the key (16 hex digits), recorded in each signature; reveals nothing of it."""
        return hmac.digest(self.secret, _ID_CONTEXT, "sha256").hex()[:16]


def _config_home() -> str:
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    return xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".config")


def _default_dir() -> Path:
    return Path(_config_home(), "amber")


def key_path() -> Path:
    """Where the user's key is: ``$AMBER_KEY_FILE``, else ``$XDG_CONFIG_HOME/amber/signing.key``,
    else ``~/.config/amber/signing.key``."""
    override = os.environ.get(KEY_ENV, "").strip()
    return Path(override).expanduser() if override else Path(_config_home(), "amber", "signing.key")


def load_key(*, create: bool = False) -> SigningKey | None:
    """The user's key; with ``create``, made first if there is none.

    :return: the key, or None when there is none and ``create`` is False.
    :raises SigningKeyError: the file is malformed, unreadable or readable by
        others, or (with ``create``) cannot be created.
    """
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    _create_key(path)
    return _read_key(path)


def _read_key(path: Path) -> SigningKey:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SigningKeyError(f"cannot read the signing key {path}: {describe(e)}", path=path) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SigningKeyError(f"the signing key {path} is not a regular file", path=path)
        if os.name == "posix" and st.st_mode & 0o077:
            raise SigningKeyError(
                f"the signing key {path} may be read or changed by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); make it private: chmod 600 {path}", path=path)
        data = b""
        while len(data) <= _MAX_KEY_FILE and (chunk := os.read(fd, _MAX_KEY_FILE + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    text = data.decode("ascii", errors="replace").strip()
    if _KEY_TEXT.fullmatch(text) is None:
        raise SigningKeyError(f"the signing key {path} is malformed: it must hold {2 * KEY_BYTES} hex "
                              "digits", path=path)
    return SigningKey(path, bytes.fromhex(text))


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (mode 0700) if missing; amber's default directory is kept at 0700."""
    created = not directory.exists()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created or directory == _default_dir():
        os.chmod(directory, 0o700)


def _create_key(path: Path) -> None:
    """Write a new key at ``path``, whole or not at all; if another process made one first, keep it."""
    data = secrets.token_bytes(KEY_BYTES).hex().encode("ascii") + b"\n"
    try:
        _private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)  # appears complete, and never replaces a key already there
            except FileExistsError:
                pass
            except OSError:  # no hard links on this file system
                if not os.path.lexists(path):
                    os.rename(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        fsync_dir(path.parent)
    except OSError as e:
        raise SigningKeyError(
            f"cannot create the signing key {path}: {describe(e)}; set {KEY_ENV} to a file in a "
            "writable directory of yours", path=path) from e


def key_for_saving() -> SigningKey | None:
    """The key to sign a save with, created on first use; None (with a warning) if it cannot be had:
    the checkpoint is then written unsigned, and loading it needs an explicit opt-in."""
    try:
        return load_key(create=True)
    except SigningKeyError as e:
        warn(f"{e.message}; the checkpoint is saved unsigned, so loading it will need "
             "allow_pickle=True or `amber trust`")
        return None


def _mac(content: Mapping[str, Any], key: SigningKey) -> str:
    body = {k: v for k, v in content.items() if k not in (SIGNATURE, SELF_DIGEST)}
    return _mac_of(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True), key)


def _mac_of(text: str, key: SigningKey) -> str:
    """The MAC of a manifest's body serialised as ``text`` (sorted keys, no spaces, ASCII)."""
    return hmac.digest(key.secret, _MAC_CONTEXT + text.encode("ascii"), "sha256").hex()


def sign(content: Mapping[str, Any], key: SigningKey) -> dict[str, str]:
    """The signature of a manifest's content (store it under :data:`SIGNATURE`)."""
    return {"scheme": SCHEME, "key_id": key.key_id, "mac": _mac(content, key)}


def signature_problem(
    raw: Mapping[str, Any], key: SigningKey, *, members: Mapping[str, str] | None = None
) -> str | None:
    """Why a manifest's signature does not vouch for it with ``key``, or None if it does.

    :param members: ``raw``'s :func:`amber.layout.canonical_members` (:attr:`Manifest.members`),
        if already made: the MAC is then computed from them, without serialising ``raw`` again.
    """
    sig = raw.get(SIGNATURE)
    if sig is None:
        return "it carries no signature"
    if not (isinstance(sig, dict) and sig.get("scheme") == SCHEME and isinstance(sig.get("mac"), str)
            and isinstance(sig.get("key_id"), str) and 0 < len(sig["key_id"]) <= 64):
        return "its signature is malformed"
    if sig["key_id"] != key.key_id:
        return (f"it is signed with another key (key id {sig['key_id']!r}; yours, {key.path}, "
                f"is {key.key_id!r})")
    if members is None:
        mac = _mac(raw, key)
    else:  # the same text: the members, less these two, in the same order
        mac = _mac_of("{" + ",".join(text for k, text in members.items()
                                     if k not in (SIGNATURE, SELF_DIGEST)) + "}", key)
    if not hmac.compare_digest(sig["mac"].encode("ascii", "replace"), mac.encode("ascii")):
        return "its signature does not match its content (it was changed after it was signed)"
    return None


def weak_digest(manifest: Manifest) -> str | None:
    """Why a manifest's digests do not pin its files' content (one is not cryptographic), or None."""
    if manifest.all_cryptographic:  # found so when it was read, for all its files at once
        return None
    for rel, entry in manifest.files.items():
        if not is_cryptographic(entry.digest):
            algorithm = (parse_digest(entry.digest) or ("unknown",))[0]
            return (f"{manifest.directory / rel} has a {algorithm} digest, which detects damage "
                    "but not forgery")
    return None


def _problem(manifest: Manifest, key: SigningKey) -> str | None:
    return signature_problem(manifest.raw, key, members=manifest.members) or weak_digest(manifest)


def check_trust(manifest: Manifest) -> tuple[Manifest, str | None]:
    """Whether the user's key vouches for a checkpoint read from ``manifest`` (its top level).

    A policy directory inside an algorithm checkpoint has no signature of its
    own: the algorithm's signed manifest vouches for it, and its manifest is
    then read again, checked against the digest that signed manifest records.

    :return: the manifest to read the checkpoint with, and why it is not
        trusted (None: trusted; each file read must then match its digest).
    :raises CorruptCheckpointError: ``manifest`` is a policy's that does not match the record its
        algorithm checkpoint keeps of it (:func:`policy_manifest`), whatever the key: no trust helps.
    """
    around = _algorithm_of(manifest) if SIGNATURE not in manifest.raw and manifest.type == "Policy" else None
    try:
        key = load_key()
    except SigningKeyError as e:
        return manifest, e.message
    if key is None:
        return manifest, f"this user has no signing key yet ({key_path()}), so no signature to trust"
    problem = _problem(manifest, key)
    if problem and around is not None:
        top_dir, top, policy = around
        if isinstance(top, str):
            return manifest, top  # why the algorithm around it cannot vouch for it
        why = _problem(top, key)
        if why is None:
            return policy, weak_digest(policy)
        problem = f"the algorithm checkpoint {top_dir} whose signature would cover it is not trusted: {why}"
    return manifest, problem


def containing_algorithm(directory: Path) -> Path | None:
    """The algorithm checkpoint whose policy ``directory`` is (``ALGO/policies/ID``), or None."""
    directory = Path(directory).absolute()
    top = directory.parent.parent
    if directory.parent.name != "policies" or not (top / MANIFEST).is_file():
        return None
    return top


def policy_manifest(top_dir: Path, top: Manifest, pid: str) -> Manifest:
    """The manifest of policy ``pid`` of the algorithm checkpoint ``top_dir`` (whose manifest is
    ``top``), checked against the record ``top`` keeps of it: the same bytes, a Policy checkpoint
    in the algorithm's format.

    :raises CorruptCheckpointError: it does not match (the policy was damaged, or replaced after
        the algorithm was saved); the message names both and says it is no matter of trust.
    """
    directory = top_dir / "policies" / pid
    try:
        policy = read_manifest(directory, expected=top.files[f"policies/{pid}/{MANIFEST}"], root=top_dir)
        if policy.type != "Policy" or policy.format != top.format:
            raise CorruptCheckpointError(f"{policy.path}: a {policy.type} checkpoint in format "
                                         f"{policy.format!r}, not a Policy in format {top.format!r}")
    except (CorruptCheckpointError, NotACheckpointError) as e:
        raise CorruptCheckpointError(
            f"{directory}: its manifest does not match the record of its algorithm checkpoint {top_dir} "
            f"({e.message}): the policy was damaged, or replaced after the algorithm was saved, and no "
            f"signature or `amber trust` makes it whole; `amber verify {top_dir}` lists what differs",
            path=directory) from e
    return policy


def _algorithm_of(manifest: Manifest) -> tuple[Path, Manifest | str, Manifest] | None:
    """The algorithm checkpoint around a policy (None: it is in none): its directory, its manifest
    (or why it cannot vouch for the policy) and the policy's manifest read again, checked against
    the algorithm's record of it.

    :raises CorruptCheckpointError: the policy's manifest does not match that record
        (:func:`policy_manifest`): damage, which no trust would repair.
    """
    directory = manifest.directory.absolute()
    top_dir = containing_algorithm(directory)
    if top_dir is None:
        return None
    try:
        top = read_manifest(top_dir)
    except CheckpointError as e:
        return top_dir, f"the algorithm checkpoint {top_dir} around it cannot be read: {e.message}", manifest
    if top.type != "Algorithm" or directory.name not in top.policy_ids \
            or f"policies/{directory.name}/{MANIFEST}" not in top.files:
        return top_dir, f"the algorithm checkpoint {top_dir} around it does not list it", manifest
    return top_dir, top, policy_manifest(top_dir, top, directory.name)
