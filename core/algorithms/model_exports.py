"""The model files a checkpoint can carry: each policy's native ``model/`` folder
(``.checkpointing(export_native_model_files=True)``), written by the exporters."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amber.checkpoint_write import Attachment

__all__ = ["model_exports"]


def model_exports(algo: Any, *, frozen: bool) -> dict[str, Attachment]:
    """With ``export_native_model_files``: what writes each policy's ``model/`` folder in a
    save of ``algo`` (an :class:`~amber.algorithms.algorithm.Algorithm`).

    :param frozen: for a background save: take each network now (``policy.export_graph()``,
        a copy) and export it later as ``Policy.export_model`` would have; a policy with an
        ``export_model`` of its own exports now, into a temporary folder copied later.
    """
    from amber.async_save import snapshot
    from amber.export import export_model
    from amber.policy.policy import Policy as BasePolicy

    out: dict[str, Attachment] = {}
    if not algo.config.export_native_model_files:
        return out
    pm = algo.pm
    for pid, policy in algo.policies.items():
        if not hasattr(policy, "export_model"):
            continue
        if not frozen:
            out[pid] = (lambda p, i: lambda d: p.export_model(d / "model", pm=pm, policy_id=i))(policy, pid)
        elif type(policy).export_model is BasePolicy.export_model:
            graph = snapshot(policy.export_graph(), fresh_arrays=True)
            if graph.framework is None:  # as Policy.export_model does
                framework = getattr(policy, "framework", None) or "torch"
                graph = dataclasses.replace(graph, framework=framework)
            out[pid] = (lambda g, i: lambda d: export_model(g, d / "model", pm=pm, policy_id=i))(graph, pid)
        else:  # removed with the folder object, once the save is over
            done = tempfile.TemporaryDirectory(prefix="amber-export-")
            policy.export_model(Path(done.name) / "model", pm=pm)
            out[pid] = (lambda t: lambda d: shutil.copytree(Path(t.name) / "model", d / "model"))(done)
    return out
