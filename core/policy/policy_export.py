"""A policy's network as an export (:meth:`amber.policy.policy.Policy.export_model`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from amber.policy.policy import Policy

__all__ = ["export_policy_model"]


def export_policy_model(
    policy: Policy,
    export_dir: str | os.PathLike[str],
    *,
    format: str | None,
    pm: pluggy.PluginManager | None,
    storage_options: Mapping[str, Any] | None,
    policy_id: str | None,
    shorthands: Mapping[str, Any],
    **options: Any,
) -> list[str]:
    """:meth:`~amber.policy.policy.Policy.export_model`: ``policy.export_graph()`` exported by
    :func:`amber.export.export_model`, with ``shorthands`` (the ``onnx`` keyword's, when it asks for
    an export) and ``options`` as its keywords; a graph that names no framework gets the policy's
    (``torch`` where it has none)."""
    from amber.export import export_model

    graph = policy.export_graph()
    if graph.framework is None:  # amber's policies are torch policies; others say so (RLlib's .framework)
        graph = dataclasses.replace(graph, framework=getattr(policy, "framework", None) or "torch")
    paths = export_model(graph, export_dir, format=format, pm=pm, storage_options=storage_options,
                         policy_id=policy_id, **{**options, **shorthands})
    return [os.fspath(p) for p in paths]
