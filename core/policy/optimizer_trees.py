"""A saved optimizer state checked before a policy takes it.

Every framework's policy saves its optimizers as torch's ``state_dict`` tree (``param_groups``:
hyperparameters and parameter ids; ``state``: per parameter id, ``step`` and the moments). Torch
applies such a tree lazily: a moment of the wrong shape, an ``lr`` that is a string or a group too
many is only found at the next update, as a raw error that names no file, after ``restore()`` has
returned. :func:`check_optimizer_tree` finds them when the state is set, before anything changes.

Importing this module imports numpy only (a tf2 policy uses it without torch).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["check_optimizer_tree"]

#: Hyperparameters that are numbers >= 0 (torch's optimizers refuse others when they are built).
_NON_NEGATIVE = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "lr_decay",
                 "initial_accumulator_value", "rho")
#: Hyperparameters that are flags; those of _FLAGS_OR_NONE may also be None (torch's "choose").
_FLAGS = ("amsgrad", "maximize", "nesterov", "capturable", "differentiable", "decoupled_weight_decay")
_FLAGS_OR_NONE = ("foreach", "fused")
#: An Adam's per-parameter buffers: arrays shaped as their parameter, which need a ``step``.
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
#: The settings torch's Adam (every policy's default optimizer) reads at each step and does not
#: default when a state is loaded (it defaults its flags): a group without one fails at train().
_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay")
#: Settings only torch's other optimizers have: a group naming one is not an Adam's (it needs ``lr``).
_NOT_ADAM = frozenset({"momentum", "dampening", "nesterov", "alpha", "centered", "rho", "lr_decay",
                       "initial_accumulator_value", "lambd", "t0", "etas", "step_sizes"})

Shapes = Sequence[Sequence[tuple[int, ...]]]
#: A parameter id's shape and param group.
_Param = tuple[tuple[int, ...], Mapping[str, Any]]


def check_optimizer_tree(tree: Any, name: str, shapes: Shapes | None) -> None:
    """Check optimizer ``name``'s saved tree.

    :param shapes: per param group, the shapes of its parameters in order (torch's layout): the
        groups, their parameter ids and each buffer's shape must fit them. None: the shapes are
        not checked (a tf2 policy starts moments that do not fit again, with a warning).
    :raises ValueError: what does not fit, named by its place in the tree.
    """
    where = f"optimizer {name!r}"
    if not isinstance(tree, Mapping):
        raise ValueError(f"{where}: the saved state is a {type(tree).__name__}, not a mapping")
    extra = sorted(map(str, set(tree) - {"state", "param_groups"}))
    if extra:
        raise ValueError(f"{where}: unknown entries {extra} (a state holds state and param_groups)")
    required = ("state", "param_groups") if shapes is not None else ()
    missing = [k for k in required if k not in tree]
    if missing:
        raise ValueError(f"{where}: the saved state has no {' or '.join(missing)}")
    params = _check_groups(tree.get("param_groups"), where, shapes)
    _check_state(tree.get("state"), where, params, strict=shapes is not None)


def _check_groups(groups: Any, where: str, shapes: Shapes | None) -> dict[int, _Param]:
    """The param groups checked; each parameter id's shape (``()`` without ``shapes``) and group."""
    if groups is None and shapes is None:
        return {}
    if not isinstance(groups, (list, tuple)) or not groups:
        raise ValueError(f"{where}: param_groups must be a non-empty list, not {_shown(groups)}")
    if shapes is not None and len(groups) != len(shapes):
        raise ValueError(f"{where}: {len(groups)} param groups saved, the optimizer has {len(shapes)}")
    found: dict[int, _Param] = {}
    for g, group in enumerate(groups):
        at = f"{where}: param_groups[{g}]"
        if not isinstance(group, Mapping) or not all(isinstance(k, str) for k in group):
            raise ValueError(f"{at} must be a mapping of names, not {_shown(group)}")
        needed = () if shapes is None else ("lr",) if _NOT_ADAM.intersection(group) else _ADAM_KEYS
        absent = [k for k in needed if k not in group]
        if absent:
            raise ValueError(f"{at} lacks {', '.join(absent)} (its optimizer reads them at each step)")
        for key, value in group.items():
            _check_hyperparameter(key, value, f"{at}[{key!r}]")
        ids = group.get("params")
        if ids is None and shapes is None:
            continue
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
            raise ValueError(f"{at}['params'] must be a list of parameter ids, not {_shown(ids)}")
        if shapes is not None and len(ids) != len(shapes[g]):
            raise ValueError(f"{at} holds {len(ids)} parameters, the optimizer's {len(shapes[g])}")
        for i, pid in enumerate(ids):
            if int(pid) in found:
                raise ValueError(f"{at}['params'] repeats parameter id {int(pid)}")
            found[int(pid)] = (tuple(shapes[g][i]) if shapes is not None else (), group)
    return found


def _check_hyperparameter(key: str, value: Any, at: str) -> None:
    if key == "params":
        return
    if key in _NON_NEGATIVE:
        if not _is_real(value) or not 0 <= float(value) < math.inf:
            raise ValueError(f"{at} is {_shown(value)}, not a finite number >= 0")
    elif key == "betas":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(_is_real(b) and 0 <= float(b) < 1 for b in value)):
            raise ValueError(f"{at} is {_shown(value)}, not two numbers in [0, 1)")
    elif key in _FLAGS or key in _FLAGS_OR_NONE:
        if not (isinstance(value, (bool, np.bool_)) or (value is None and key in _FLAGS_OR_NONE)):
            raise ValueError(f"{at} is {_shown(value)}, not a bool")
        if key == "differentiable" and value:  # for autograd through a step; never saved by a run
            raise ValueError(f"{at} is True: a saved optimizer steps without autograd")
    elif key == "param_names":
        if not isinstance(value, (list, tuple)) or not all(isinstance(n, str) for n in value):
            raise ValueError(f"{at} is {_shown(value)}, not a list of names")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError(f"{at} is {_shown(value)}: an optimizer setting is a number, a bool, a "
                         "string or None")


def _check_state(state: Any, where: str, params: Mapping[int, _Param], *, strict: bool) -> None:
    """Each parameter's saved buffers: a ``step`` >= 0 and arrays of floats (``strict``: only of the
    ids of the param groups, shaped as their parameter)."""
    if state is None and not strict:
        return
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: state must be a mapping of parameter ids, not {_shown(state)}")
    for key, entry in state.items():
        pid = int(key) if _is_int(key) or (isinstance(key, str) and key.isdigit()) else None
        at = f"{where}: state[{key!r}]"
        if pid is None or (strict and pid not in params):
            raise ValueError(f"{at}: not a parameter id of its param groups")
        if not isinstance(entry, Mapping) or not all(isinstance(k, str) for k in entry):
            raise ValueError(f"{at} must be a mapping of names, not {_shown(entry)}")
        if any(k in entry for k in _MOMENTS):
            amsgrad = pid in params and params[pid][1].get("amsgrad") is True
            absent = [k for k in ("step", *_MOMENTS[:2 + amsgrad]) if k not in entry]
            if absent:
                raise ValueError(f"{at} lacks {', '.join(absent)}")
        for k, value in entry.items():
            if k == "step":
                if not _is_real(value) or not 0 <= float(value) < math.inf:
                    raise ValueError(f"{at}['step'] is {_shown(value)}, not a finite number >= 0")
                continue
            facts = _array_facts(value)
            if facts is None and (value is None and k not in _MOMENTS):
                continue
            if facts is None or facts[1] != "f":
                raise ValueError(f"{at}[{k!r}] is {_shown(value)}, not an array of floats")
            if strict and facts[0] != params[pid][0]:
                raise ValueError(f"{at}[{k!r}] has shape {list(facts[0])}, its parameter "
                                 f"{list(params[pid][0])}")
            if k in _MOMENTS:
                _check_moment(value, k, f"{at}[{k!r}]")


def _check_moment(value: Any, key: str, at: str) -> None:
    """A moment's values: finite, and ``>= 0`` for the squares (``exp_avg_sq``...): the step
    divides by their square root, and one NaN there makes every weight it touches NaN. Read as
    its least and greatest values (a pass each, allocating nothing; NaN propagates to both)."""
    if getattr(value, "size", None) == 0 or getattr(value, "numel", lambda: 1)() == 0:
        return
    low, high = (float(value.min()), float(value.max()))
    floor = 0.0 if key != "exp_avg" else -math.inf
    if not (floor <= low and high < math.inf and low > -math.inf):
        what = "finite numbers" if key == "exp_avg" else "finite numbers >= 0"
        raise ValueError(f"{at} holds values in [{low}, {high}], not {what} (a training step would make "
                         "the weights non-finite)")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    """A real number: a Python or numpy one, or an array (numpy or torch) holding one."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return True
    facts = _array_facts(value)
    return facts is not None and facts[1] in "fiu" and math.prod(facts[0]) == 1


def _array_facts(value: Any) -> tuple[tuple[int, ...], str] | None:
    """An array's shape and kind ("f" floating, "i" integer, other), numpy's or torch's (not
    imported: a tensor is known by its module), else None."""
    if isinstance(value, (np.ndarray, np.generic)):
        return tuple(value.shape), value.dtype.kind
    if type(value).__module__.partition(".")[0] == "torch" and hasattr(value, "is_floating_point"):
        kind = "f" if value.is_floating_point() else "b" if str(value.dtype) == "torch.bool" else "i"
        return tuple(value.shape), kind
    return None


def _shown(value: Any) -> str:
    """A value for a message, short (a saved string may be long)."""
    facts = _array_facts(value)
    if facts is not None:
        return f"an array of shape {list(facts[0])} and dtype {value.dtype}"
    plain = (str, bytes, bool, int, float, list, tuple, type(None))
    text = repr(value) if isinstance(value, plain) else f"a {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."
