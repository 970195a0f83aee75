"""Serving a saved policy without torch: ``from amber.serve import load_policy``.

``load_policy(path, policy_id=None)`` returns a policy whose
``compute_single_action`` and ``compute_actions`` act as the torch policy's
do, computed in numpy; importing, loading and acting import neither torch
nor gymnasium. The implementation lives in :mod:`amber.serving` (see
:mod:`amber.serving.load`); docs/serving.md describes what can be served.
"""

from __future__ import annotations

from amber.serving.load import (
    FOREIGN_PLUGINS,
    READER_PLUGINS,
    PickleCheckpointError,
    PolicyChoiceError,
    ServedPolicy,
    UnsafeModelError,
    UnservablePolicyError,
    describe_space,
    load_policy,
    reading_plugin_manager,
)

__all__ = [
    "FOREIGN_PLUGINS",
    "READER_PLUGINS",
    "PickleCheckpointError",
    "PolicyChoiceError",
    "ServedPolicy",
    "UnsafeModelError",
    "UnservablePolicyError",
    "describe_space",
    "load_policy",
    "reading_plugin_manager",
]
