"""Ray for remote env runners and Tune: whether it is installed, importing it, starting it.

Ray is imported only when asked for (``num_env_runners > 0``, Ray Tune); its absence is a
``ValueError`` naming the extra to install.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

__all__ = ["RAY_EXTRA", "check_env_runners", "ensure_ray", "import_ray", "ray_installed",
           "registered_creators"]

#: What to install for remote env runners and Ray Tune.
RAY_EXTRA = "pip install 'amber-rl[ray]'"


def import_ray() -> Any:
    """The ``ray`` module.

    :raises ValueError: ray is not installed (the message names the extra).
    """
    try:
        import ray
    except ImportError as e:
        raise ValueError(f"env runners on Ray (num_env_runners > 0) and Ray Tune need ray, which is not "
                         f"installed: {RAY_EXTRA}; or use num_env_runners=0 (sampling in this process, "
                         "num_envs_per_env_runner copies of the env)") from e
    return ray


def ray_installed() -> bool:
    """Whether ray can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # sys.modules["ray"] is None: ray is blocked
        return False


def check_env_runners(n: Any) -> None:
    """``num_env_runners`` must be an int >= 0, and ray installed when it is above 0.

    :raises ValueError: naming the setting, or the extra to install.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"num_env_runners must be an int >= 0, not {n!r}")
    if n > 0:
        if not ray_installed():
            raise ValueError(f"num_env_runners={n} runs env runners as Ray actors, and ray is not "
                             f"installed: {RAY_EXTRA}; or use num_env_runners=0 (sampling in this "
                             "process, num_envs_per_env_runner copies of the env)")
        import_ray()


def ensure_ray(num_runners: int) -> Any:
    """The ray module, started here (quietly, this machine's CPUs) when nobody started it."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=max(os.cpu_count() or 1, num_runners), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=False)
    return ray


def registered_creators(names: Any = None) -> dict[str, Any]:
    """The env creators registered with ``amber.envs.register_env`` (only ``names``' when given) that
    can go to another Ray process (cloudpickle can pickle them), to be registered again there."""
    from ray import cloudpickle

    from amber.envs.registry import _CREATORS  # the registry of this process

    out = {}
    for name, creator in _CREATORS.items():
        if names is not None and name not in names:
            continue
        try:
            cloudpickle.dumps(creator)
        except Exception:  # noqa: BLE001 - unpicklable: the trial does not know it (named there)
            continue
        out[name] = creator
    return out
