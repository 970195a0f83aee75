"""``amber trust``: sign a checkpoint with your key, so that it loads by default.

A pickle checkpoint runs code when it is loaded; amber loads one by default
only when it is signed with the user's key (docs/security.md). This command
signs one the user decided to trust (:func:`amber.trust.trust_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from amber.cli.base import LOCATION, CliState, cli, echo

__all__ = ["trust"]


def _trusted_through_algorithm(path: Path | str, pm: Any) -> bool:
    """Whether ``path`` is a policy of an algorithm checkpoint that lists it and that loads by
    default (signed with the user's key, or in a safe format): then it loads by default too, and
    this says so. Otherwise (False) ``trust_state`` refuses the policy, naming its algorithm."""
    from amber.layout import MANIFEST, read_manifest
    from amber.signing import containing_algorithm
    from amber.trust import trust_state

    if not isinstance(path, Path) or (outer := containing_algorithm(path)) is None:
        return False
    if f"policies/{path.name}/{MANIFEST}" not in read_manifest(outer).files:
        return False
    info = trust_state(outer, pm=pm)
    if not info.safe and info.problem is not None:
        return False
    how = (f"in format {info.format!r}, which never runs code when read" if info.safe
           else "signed with your key")
    echo(f"nothing changed: {path} is trusted through its algorithm {outer} ({how})")
    return True


@cli.command()
@click.argument("path", type=LOCATION)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation: you trust its author.")
@click.pass_obj
def trust(state: CliState, path: Path, yes: bool) -> None:
    """Sign the checkpoint PATH with your key, so that it loads by default.

    Loading a pickle checkpoint runs whatever code its author put in it:
    trust only a checkpoint from someone you trust, received through a
    channel you trust. Every file is verified against its digest first; the
    state files are kept, only the manifests are rewritten, atomically.
    Your key is $AMBER_KEY_FILE, else $XDG_CONFIG_HOME/amber/signing.key, else
    ~/.config/amber/signing.key. A link (runs/latest) signs the checkpoint it points to.
    """
    from amber.trust import trust_checkpoint, trust_state

    pm = state.get_pm()
    if _trusted_through_algorithm(path, pm):
        return
    info = trust_state(path, pm=pm)
    if info.safe:
        echo(f"{path} is in format {info.format!r}, which never runs code when read: "
                   "it needs no signature; nothing changed")
        return
    if info.problem is None:
        echo(f"{path} is already signed with your key; nothing changed")
        return
    if not yes:
        echo(f"{path}: {info.type} checkpoint in format {info.format!r}, written by amber "
                   f"{info.amber_version!r} on {info.created!r}", err=True)
        echo(f"not trusted yet: {info.problem}", err=True)
        echo("Loading it runs any code its author put in it.", err=True)
        click.confirm(f"Do you trust whoever wrote {path}, and sign it with your key?",
                      abort=True, err=True)
    result = trust_checkpoint(path, pm=pm)
    if not result.changed or result.key is None:
        echo(f"{path} is already signed with your key; nothing changed")
        return
    from amber.signing import SIGNED_DIGEST

    echo(f"trusted {path}: {result.verified} files verified ({result.upgraded} digests upgraded "
               f"to {SIGNED_DIGEST}), signed with key {result.key.key_id} ({result.key.path})")
