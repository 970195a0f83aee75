"""A framework-neutral description of a policy's network, for the model exporters.

A policy describes its inference network as a :class:`ModelGraph`: an
observation preprocessing step, a few named MLP *towers* over the
preprocessed observation, and the named outputs computed from them
(``action_dist_inputs``, then ``vf_preds`` where there is a value function).
Exporter plugins (torch, ONNX, Keras) rebuild the network from this graph
alone, so none of them needs to know amber's policy classes, and
:meth:`ModelGraph.forward_numpy` is the reference they are tested against.

:func:`export_model` writes an export: it calls the chosen exporters through
the registry and writes ``model.json``. This module imports numpy and amber's
engine only (no torch, onnx or tensorflow).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from amber.atomic import describe, fsync_dir, fsync_tree
from amber.errors import ExportError

if TYPE_CHECKING:
    import pluggy

    from amber.registry import FormatRegistry

__all__ = [
    "ACTIVATIONS",
    "MODEL_JSON",
    "NATIVE_EXPORTER",
    "OUTPUT_KINDS",
    "Dense",
    "ExportError",
    "ModelGraph",
    "Output",
    "Preprocess",
    "action_rule",
    "export_model",
    "greedy_action",
    "weights_digest",
]

#: Activation names a :class:`Dense` layer may carry (None: linear).
ACTIVATIONS: tuple[str | None, ...] = ("tanh", "relu", None)

#: How an :class:`Output` is computed from tower outputs ``T``:
#:
#: - ``"identity"``: ``T[towers[0]]``.
#: - ``"squeeze"``: ``T[towers[0]][:, 0]`` (a value function's ``[batch]`` output).
#: - ``"dueling"``: ``T[v] + T[a] - mean(T[a], axis=1)`` with ``towers = (v, a)`` (dueling Q-values).
#: - ``"clip_log_std"``: ``T[towers[0]]`` split in halves ``(mean, log_std)``, with
#:   ``log_std`` clipped to ``[params["low"], params["high"]]``, concatenated again.
OUTPUT_KINDS: tuple[str, ...] = ("identity", "squeeze", "dueling", "clip_log_std")


@dataclass(frozen=True)
class Dense:
    """One fully connected layer: ``activation(x @ weight.T + bias)``.

    :param weight: float32 ``[out, in]`` (torch's layout).
    :param bias: float32 ``[out]``.
    :param activation: one of :data:`ACTIVATIONS`.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r} (known: {ACTIVATIONS})")
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"weight {self.weight.shape} and bias {self.bias.shape} do not fit")


@dataclass(frozen=True)
class Preprocess:
    """Observation → float32 ``[batch, features]``.

    :param kind: ``"flatten"`` (Box observations) or ``"one_hot"`` (Discrete: the
        input is the integer observation, given as a number ``[batch]``).
    :param size: the number of features it produces.
    :param start: for ``"one_hot"``, the space's first value.
    """

    kind: str
    size: int
    start: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("flatten", "one_hot"):
            raise ValueError(f"unknown preprocessing {self.kind!r} (known: 'flatten', 'one_hot')")


@dataclass(frozen=True)
class Output:
    """A named output of the graph (see :data:`OUTPUT_KINDS`)."""

    name: str
    kind: str
    towers: tuple[str, ...]
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output kind {self.kind!r} (known: {OUTPUT_KINDS})")


def _activate(x: np.ndarray, activation: str | None) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(x)
    if activation == "relu":
        return np.maximum(x, 0.0)
    return x


@dataclass(frozen=True)
class ModelGraph:
    """A policy's inference network, described for exporters.

    :param obs_shape: one observation's shape (``()`` for Discrete observations).
    :param preprocess: how observations become features.
    :param towers: named MLPs, each applied to the features.
    :param outputs: the outputs, in order (``action_dist_inputs`` first).
    :param info: JSON-able facts for ``model.json``: the spaces, the action
        distribution and how to act from the outputs (action bounds, squashing).
    """

    obs_shape: tuple[int, ...]
    preprocess: Preprocess
    towers: Mapping[str, Sequence[Dense]]
    outputs: Sequence[Output]
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for out in self.outputs:
            missing = [t for t in out.towers if t not in self.towers]
            if missing:
                raise ValueError(f"output {out.name!r} uses unknown towers {missing}")

    @property
    def output_names(self) -> list[str]:
        """The outputs' names, in order."""
        return [o.name for o in self.outputs]

    def features(self, obs: np.ndarray) -> np.ndarray:
        """The preprocessed observations, float32 ``[batch, features]``."""
        obs = np.asarray(obs)
        if self.preprocess.kind == "one_hot":
            idx = obs.reshape(obs.shape[0], 1).astype(np.int64)
            cats = np.arange(self.preprocess.start, self.preprocess.start + self.preprocess.size)
            return (idx == cats).astype(np.float32)
        return obs.reshape(obs.shape[0], -1).astype(np.float32)

    def forward_numpy(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for a batch of observations, computed in numpy (float64 inside, float32 out).

        The reference every exporter is tested against.
        """
        x = self.features(obs).astype(np.float64)
        cache: dict[str, np.ndarray] = {}
        for name, layers in self.towers.items():
            h = x
            for layer in layers:
                h = _activate(h @ layer.weight.astype(np.float64).T + layer.bias.astype(np.float64),
                              layer.activation)
            cache[name] = h
        result = {}
        for out in self.outputs:
            t = cache[out.towers[0]]
            if out.kind == "squeeze":
                value = t[:, 0]
            elif out.kind == "dueling":
                adv = cache[out.towers[1]]
                value = t + adv - adv.mean(axis=1, keepdims=True)
            elif out.kind == "clip_log_std":
                mean, log_std = np.split(t, 2, axis=-1)
                value = np.concatenate(
                    [mean, np.clip(log_std, out.params["low"], out.params["high"])], axis=-1)
            else:
                value = t
            result[out.name] = value.astype(np.float32)
        return result

    def describe(self) -> dict[str, Any]:
        """The architecture as JSON-able data (no weights): what ``model.json`` records."""
        return {
            "input": {"name": "obs", "dtype": "float32", "shape": ["batch", *self.obs_shape]},
            "preprocess": {"kind": self.preprocess.kind, "size": self.preprocess.size,
                           "start": self.preprocess.start},
            "towers": {
                name: [{"in": int(layer.weight.shape[1]), "out": int(layer.weight.shape[0]),
                        "activation": layer.activation} for layer in layers]
                for name, layers in self.towers.items()
            },
            "outputs": [{"name": o.name, "kind": o.kind, "towers": list(o.towers), **dict(o.params)}
                        for o in self.outputs],
            **dict(self.info),
        }


# --------------------------------------------------------------------------
# acting from the outputs
# --------------------------------------------------------------------------


def action_rule(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """How to pick the greedy action from the outputs, as data (``model.json``'s ``"act"``).

    - ``{"op": "argmax", "output": "action_dist_inputs", "offset": start}``: Discrete actions
      (logits or Q-values): ``argmax(out, axis=-1) + offset``.
    - ``{"op": "clip", "output", "size", "low", "high", "shape"}``: Box actions (Gaussian):
      ``clip(out[:, :size], low, high)`` reshaped to ``[batch, *shape]``.
    - ``{"op": "tanh_squash", ...}`` (same keys): squashed Gaussian (SAC):
      ``low + (tanh(out[:, :size]) + 1) / 2 * (high - low)``.

    ``low`` and ``high`` are flat lists of ``size`` numbers.

    :param info: a :class:`ModelGraph`'s ``info`` (``action_space`` and ``action_distribution``).
    :return: the rule, or None when ``info`` does not say.
    """
    space = info.get("action_space")
    dist = info.get("action_distribution")
    if not isinstance(space, Mapping) or dist is None:
        return None
    if space.get("type") == "Discrete":
        return {"op": "argmax", "output": "action_dist_inputs", "offset": int(space.get("start", 0))}
    if space.get("type") == "Box":
        shape = [int(d) for d in space["shape"]]
        size = int(np.prod(shape, dtype=np.int64))
        low = np.broadcast_to(np.asarray(space["low"], dtype=np.float64), shape).reshape(-1)
        high = np.broadcast_to(np.asarray(space["high"], dtype=np.float64), shape).reshape(-1)
        return {"op": "tanh_squash" if dist == "squashed_gaussian" else "clip",
                "output": "action_dist_inputs", "size": size, "shape": shape,
                "low": low.tolist(), "high": high.tolist()}
    return None


def greedy_action(rule: Mapping[str, Any], outputs: Mapping[str, Any]) -> np.ndarray:
    """The greedy actions for a batch, from an exported model's outputs and ``model.json``'s ``"act"``.

    A reference in numpy: serving code needs only these few lines (see docs/export.md).

    :param rule: ``model.json["act"]`` (see :func:`action_rule`).
    :param outputs: the model's outputs by name (arrays ``[batch, ...]``).
    :return: int64 ``[batch]`` (Discrete) or float32 ``[batch, *shape]`` (Box).
    """
    out = np.asarray(outputs[rule["output"]])
    if rule["op"] == "argmax":
        return out.argmax(axis=-1).astype(np.int64) + int(rule["offset"])
    mean = out[:, : int(rule["size"])].astype(np.float64)
    low, high = np.asarray(rule["low"], np.float64), np.asarray(rule["high"], np.float64)
    if rule["op"] == "tanh_squash":
        act = low + (np.tanh(mean) + 1.0) / 2.0 * (high - low)
    elif rule["op"] == "clip":
        act = np.clip(mean, low, high)
    else:
        raise ValueError(f"unknown action rule {rule['op']!r}")
    return act.astype(np.float32).reshape((out.shape[0], *rule["shape"]))


# --------------------------------------------------------------------------
# writing an export
# --------------------------------------------------------------------------

#: The file every export writes beside the model files.
MODEL_JSON = "model.json"
#: What ``model.json``'s ``format_version`` is now.
MODEL_JSON_VERSION = 1
#: The exporter ``export_model(dir)`` uses when neither ``onnx`` nor ``format`` is given.
NATIVE_EXPORTER = "torch"

_STAGE_PREFIX = ".amber-export-"


def weights_digest(graph: ModelGraph) -> str:
    """A digest of the graph's architecture and weights (``model.json``'s ``weights_digest``)."""
    h = hashlib.sha256(json.dumps(graph.describe(), sort_keys=True, default=str).encode())
    for name in graph.towers:
        for layer in graph.towers[name]:
            for arr in (layer.weight, layer.bias):
                a = np.ascontiguousarray(arr, dtype=np.float32)
                h.update(str(a.shape).encode())
                h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def _plan(registry: FormatRegistry, onnx: int | None, format: str | None) -> list[tuple[str, dict[str, Any]]]:
    jobs: dict[str, dict[str, Any]] = {}
    if onnx is not None:
        if isinstance(onnx, bool) or not isinstance(onnx, (int, np.integer)):
            raise ExportError(f"onnx must be an opset number (an int), not {onnx!r}")
        jobs["onnx"] = {"opset": int(onnx)}
    if format is not None:
        jobs.setdefault(str(format), {})
    if not jobs:
        jobs[NATIVE_EXPORTER] = {}
    for name in jobs:
        registry.exporter(name)  # unknown names fail before anything is written
    return list(jobs.items())


def _is_link(path: Path) -> bool:
    return path.is_symlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _prepare_dir(target: Path) -> None:
    if _is_link(target):
        raise ExportError(f"refusing to export into {target}: it is a symbolic link", path=target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ExportError(f"cannot export into {target}: it exists and is not a directory",
                          path=target) from None
    except OSError as e:
        raise ExportError(f"cannot create {target}: {describe(e)}", path=target) from e
    if _is_link(target) or not target.is_dir():
        raise ExportError(f"refusing to export into {target}: not a plain directory", path=target)
    for entry in os.scandir(target):  # staging dirs of exports that crashed
        m = re.fullmatch(re.escape(_STAGE_PREFIX) + r"(\d+)-[0-9a-f]+", entry.name)
        if m and entry.is_dir(follow_symlinks=False) and not _pid_alive(int(m[1])):
            shutil.rmtree(entry.path, ignore_errors=True)


def _check_written(stage: Path, files: Sequence[Path], exporter: str) -> list[str]:
    """The top-level names an exporter wrote; refuses links and paths outside ``stage``."""
    names = []
    for f in files:
        p = Path(f)
        p = p if p.is_absolute() else stage / p
        try:
            rel = p.relative_to(stage)
        except ValueError:
            raise ExportError(f"exporter {exporter!r} reported {p}, outside the export directory",
                              path=stage.parent) from None
        if not rel.parts or rel.parts[0] in (MODEL_JSON, "..") or not (stage / rel.parts[0]).exists():
            raise ExportError(f"exporter {exporter!r} reported a file it did not write: {rel}",
                              path=stage.parent)
        names.append(rel.parts[0])
    for dirpath, dirnames, filenames in os.walk(stage):
        for name in dirnames + filenames:
            if _is_link(Path(dirpath) / name):
                raise ExportError(f"exporter {exporter!r} wrote a symbolic link ({name}); refused",
                                  path=stage.parent)
    return list(dict.fromkeys(names))


def _previous(target: Path) -> dict[str, Any] | None:
    """The ``model.json`` an earlier export left in ``target``, if it is one of ours."""
    path = target / MODEL_JSON
    if _is_link(path):
        raise ExportError(f"refusing to replace {path}: it is a symbolic link", path=path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or (raw.get("producer") or {}).get("name") != "amber":
        return None
    return raw


def _own_names(previous: Mapping[str, Any] | None) -> list[str]:
    files = (previous or {}).get("files")
    if not isinstance(files, Mapping):
        return []
    return [n for n in files if isinstance(n, str) and n and "/" not in n and "\\" not in n
            and n not in (".", "..", MODEL_JSON) and not n.startswith(_STAGE_PREFIX)]


def _remove(path: Path) -> None:
    if path.is_dir() and not _is_link(path):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def export_model(
    graph: ModelGraph,
    directory: str | os.PathLike[str],
    *,
    onnx: int | None = None,
    format: str | None = None,
    pm: pluggy.PluginManager | None = None,
) -> list[Path]:
    """Export a policy's network as files that load with their own runtime alone.

    With neither ``onnx`` nor ``format``, the native files (``model.pt2``);
    ``onnx=OPSET``: ``model.onnx``; ``format=NAME``: what the exporter ``NAME``
    writes (``"keras"``: ``saved_model/`` and ``model.keras``). ``model.json``
    is always written: the architecture, spaces, the outputs and how to act
    from them, and the files of this model in the directory.

    Every file is written in a staging directory inside ``directory`` and
    moved into place; model files of an earlier export of *other* weights
    that this export does not replace are removed, so the directory always
    holds one consistent model. Nothing is written outside ``directory``, and
    a ``directory`` (or a file to replace in it) that is a symbolic link is refused.

    :param graph: the network (``policy.export_graph()``).
    :param directory: where to write; created if missing.
    :param onnx: an ONNX opset number.
    :param format: a registered exporter's name (``amber formats`` lists them).
    :param pm: the plugin manager (default: the process's).
    :return: the paths written, ``model.json`` last.
    :raises UnknownExporterError: no exporter of that name.
    :raises MissingPluginError: the exporter's extra is not installed.
    :raises ExportError: the directory is refused or writing failed.
    """
    from amber import __version__
    from amber.registry import get_registry

    registry = get_registry(pm)
    jobs = _plan(registry, onnx, format)
    target = Path(directory).absolute()  # exporters report absolute paths
    _prepare_dir(target)
    previous = _previous(target)
    digest = weights_digest(graph)
    stage = target / f"{_STAGE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stage.mkdir()
    except OSError as e:
        raise ExportError(f"cannot write in {target}: {describe(e)}", path=target) from e
    try:
        written: dict[str, dict[str, Any]] = {}
        for name, options in jobs:
            provided = registry.exporters[name]
            files = provided.item.export(graph, stage, options)
            for top in _check_written(stage, files, name):
                written[top] = {"exporter": name, **_file_facts(name, top, options)}
        kept: dict[str, Any] = {}
        stale: list[str] = []
        if previous is not None:
            same = previous.get("weights_digest") == digest
            for top in _own_names(previous):
                if top in written:
                    continue
                if same and (target / top).exists():
                    kept[top] = previous["files"][top]
                elif top in _LOADS_WITH:  # only files amber's exporters write are ever removed
                    stale.append(top)
        for top in [*written, *stale]:
            if _is_link(target / top):
                raise ExportError(f"refusing to replace {target / top}: it is a symbolic link",
                                  path=target / top)
        content = {
            "format_version": MODEL_JSON_VERSION,
            "producer": {"name": "amber", "version": __version__},
            "files": {**kept, **written},
            "weights_digest": digest,
            **graph.describe(),
            "output_names": graph.output_names,
        }
        act = action_rule(graph.info)
        if act is not None:
            content["act"] = act
        with open(stage / MODEL_JSON, "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_tree(stage)
        _move_into_place(stage, target, [*written, MODEL_JSON], stale)
    except OSError as e:
        raise ExportError(f"exporting into {target} failed: {describe(e)}; nothing was changed",
                          path=target) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [target / top for top in written] + [target / MODEL_JSON]


def _file_facts(exporter: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = dict(_LOADS_WITH.get(name, {}))
    if exporter == "onnx" and "opset" in options:
        facts["opset"] = int(options["opset"])
    return facts


_LOADS_WITH: dict[str, dict[str, str]] = {
    "model.pt2": {"runtime": "torch", "load": "torch.export.load(path).module()(obs) -> dict of outputs"},
    "model.onnx": {"runtime": "onnxruntime",
                   "load": "onnxruntime.InferenceSession(path).run(None, {'obs': obs})"},
    "saved_model": {"runtime": "tensorflow",
                    "load": "tf.saved_model.load(path).signatures['serving_default'](obs=obs)"},
    "model.keras": {"runtime": "keras", "load": "keras.saving.load_model(path)(obs) -> dict of outputs"},
}


def _move_into_place(stage: Path, target: Path, names: Sequence[str], stale: Sequence[str]) -> None:
    """Move ``names`` from ``stage`` into ``target`` (model.json last); remove ``stale`` there."""
    trash = stage / ".replaced"
    trash.mkdir()
    done: list[tuple[str, bool]] = []
    try:
        for name in names:
            dst = target / name
            had = dst.exists() or _is_link(dst)
            if had:
                os.replace(dst, trash / name)
            done.append((name, had))
            os.replace(stage / name, dst)
    except OSError:
        for name, had in reversed(done):  # put back what was there
            if (target / name).exists():
                _remove(target / name)
            if had:
                os.replace(trash / name, target / name)
        raise
    fsync_dir(target)
    for name in stale:
        _remove(target / name)
    if stale:
        fsync_dir(target)
