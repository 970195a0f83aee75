"""Policies: the networks that map observations to actions (RLlib's ``ray.rllib.policy``).

``from amber.policy import Policy`` (and ``PolicySpec``) works as RLlib's does; the class is
imported from :mod:`amber.policy.policy` on first access, so importing this package (as any of its
modules does) costs nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from amber.policy.policy import Policy, PolicySpec

__all__ = ["Policy", "PolicySpec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from amber.policy import policy

        return getattr(policy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
