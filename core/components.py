"""Capturing and restoring an owner's components through the plugins' hooks.

An owner (an Algorithm, a Policy, anything with state) names its
components; :func:`capture` asks the plugins for each one's state tree and
:func:`restore` applies them back, all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from amber.errors import CheckpointError

if TYPE_CHECKING:
    import pluggy

__all__ = ["capture", "components_of", "restore"]


def _pm(pm: pluggy.PluginManager | None) -> pluggy.PluginManager:
    from amber.plugin_manager import default_plugin_manager

    return pm if pm is not None else default_plugin_manager()


def components_of(
    owner: object, own: Mapping[str, object], *, pm: pluggy.PluginManager | None = None
) -> dict[str, object]:
    """The owner's own components plus those plugins add through ``amber_register_components``.

    :raises CheckpointError: two sources use one component name.
    """
    pm = _pm(pm)
    found = dict(own)
    for extra in pm.hook.amber_register_components(owner=owner):
        for key, component in (extra or {}).items():
            if key in found:
                raise CheckpointError(f"component name {key!r} of {type(owner).__name__} is used twice")
            found[key] = component
    return found


def capture(
    owner: object, own: Mapping[str, object], *, pm: pluggy.PluginManager | None = None
) -> dict[str, Any]:
    """Each component's state tree, by component name.

    :param owner: the object the components belong to.
    :param own: its components by name.
    :raises CheckpointError: no plugin captures some component (named).
    """
    pm = _pm(pm)
    return _capture_each(components_of(owner, own, pm=pm), pm)


def _capture_each(components: Mapping[str, object], pm: pluggy.PluginManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, component in components.items():
        state = pm.hook.amber_capture_state(component=component, key=key)
        if state is None:
            raise CheckpointError(
                f"no plugin captures the state of {key!r} ({type(component).__qualname__}); "
                "give it get_state()/set_state() or implement amber_capture_state"
            )
        out[key] = state
    return out


def restore(
    owner: object,
    own: Mapping[str, object],
    state: Mapping[str, Any],
    *,
    pm: pluggy.PluginManager | None = None,
) -> None:
    """Apply saved states to the owner's components, all or nothing.

    Components absent from ``state`` are left as they are. If applying any
    state fails, the states captured just before are put back and the error
    is raised, so the owner is left as it was.

    :raises CheckpointError: no plugin restores some component (named), or a restore failed.
    """
    pm = _pm(pm)
    comps = {k: c for k, c in components_of(owner, own, pm=pm).items() if k in state}
    before = _capture_each(comps, pm)
    done: list[str] = []
    try:
        for key, component in comps.items():
            if not pm.hook.amber_restore_state(component=component, state=state[key], key=key):
                raise CheckpointError(
                    f"no plugin restores the state of {key!r} ({type(component).__qualname__})"
                )
            done.append(key)
    except Exception as e:
        failed = key
        for k in done:
            pm.hook.amber_restore_state(component=comps[k], state=before[k], key=k)
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"restoring {failed!r} failed: {type(e).__name__}: {e}") from e
