"""Serving an ONNX export: ``model.onnx`` run with onnxruntime, acted on as ``model.json`` says.

:func:`amber.serve.load_policy` hands a directory written by
``policy.export_model(dir, onnx=OPSET)`` (or ``amber export CKPT DIR --onnx
OPSET``) here. ``model.onnx`` is read whole and checked against the size and
digest ``model.json`` records, then refused unless it is what amber's exporter
writes (:mod:`amber.serving.onnx_check`: no external data, only its
operators, a bounded computation), before onnxruntime sees a byte. The graph
computes the outputs (``action_dist_inputs``, ``vf_preds``), observation
preprocessing included; the spaces and the action distribution come from
``model.json``. onnxruntime (the ``onnx`` extra) is imported only here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from amber.digest import parse_digest
from amber.errors import CorruptCheckpointError, MissingPluginError
from amber.models.numpy_distributions import DISTRIBUTIONS
from amber.policy.sample_batch import DEFAULT_POLICY_ID
from amber.serving.load import UnservablePolicyError
from amber.serving.onnx_check import check_model
from amber.serving.policy import MAX_SPACE_ELEMENTS, ServedPolicy, describe_space, distribution_misfit
from amber.verified_io import FileEntry, open_regular, read_verified

__all__ = ["MODEL_FILE", "MODEL_JSON", "load_onnx", "read_model_json"]

MODEL_JSON = "model.json"
MODEL_FILE = "model.onnx"
#: The newest ``model.json`` layout this reads (``format_version``).
MODEL_JSON_VERSION = 1
#: onnxruntime's session option naming the folder external data is read from (for a model given as bytes).
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
#: The action distributions an export may name.
KNOWN_DISTRIBUTIONS = (*DISTRIBUTIONS, "q_values")


def read_model_json(directory: Path) -> dict[str, Any]:
    """``directory/model.json``, checked to be one amber wrote in a layout this amber reads. It is
    opened without following a link and never waited on (a FIFO is refused before it is opened).

    :raises CorruptCheckpointError: a link, not a regular file, unreadable, or not a JSON object.
    :raises UnservablePolicyError: written by a newer amber, or not by amber.
    """
    path = directory / MODEL_JSON
    fd = open_regular(path)  # CorruptCheckpointError naming it: missing, a link, a FIFO...
    try:
        with os.fdopen(fd, "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError, RecursionError) as e:
        raise CorruptCheckpointError(f"{path} cannot be read as JSON: {e}", path=path) from e
    producer = meta.get("producer") if isinstance(meta, dict) else None
    if not isinstance(producer, Mapping) or producer.get("name") != "amber":
        raise UnservablePolicyError(f"{path} was not written by amber's export", path=path)
    version = meta.get("format_version")
    if not isinstance(version, int) or version > MODEL_JSON_VERSION:
        raise UnservablePolicyError(f"{path} has format_version {version!r}; this amber reads up to "
                                    f"{MODEL_JSON_VERSION}: upgrade amber", path=path)
    return meta


def _model_bytes(directory: Path, meta: Mapping[str, Any]) -> bytes:
    """The bytes of ``model.onnx``, verified against its size and digest in ``model.json``."""
    files = meta.get("files") or {}
    entry = files.get(MODEL_FILE) if isinstance(files, Mapping) else None
    if not isinstance(entry, Mapping):
        listed = ", ".join(sorted(files)) if isinstance(files, Mapping) else "nothing"
        raise UnservablePolicyError(
            f"{directory} holds no {MODEL_FILE} (its {MODEL_JSON} lists {listed or 'nothing'}): export one "
            "with policy.export_model(dir, onnx=17) or `amber export CKPT DIR --onnx 17`, or serve the "
            "checkpoint itself", path=directory)
    size, digest = entry.get("size"), entry.get("digest")
    if not isinstance(size, int) or isinstance(size, bool) or parse_digest(digest) is None:
        raise CorruptCheckpointError(f"{directory / MODEL_JSON}: no valid size and digest for {MODEL_FILE}",
                                     path=directory / MODEL_JSON)
    return bytes(read_verified(directory, MODEL_FILE, FileEntry(size, str(digest)), listed_in=MODEL_JSON))


def _recorded_size(meta: Mapping[str, Any]) -> int:
    """The size ``model.json`` records for ``model.onnx`` (checked against the file when it is read),
    or :data:`~amber.serving.policy.MAX_SPACE_ELEMENTS` where it records none."""
    files = meta.get("files")
    entry = files.get(MODEL_FILE) if isinstance(files, Mapping) else None
    size = entry.get("size") if isinstance(entry, Mapping) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else MAX_SPACE_ELEMENTS


def _session(directory: Path, data: bytes) -> Any:
    """An onnxruntime session over ``data`` (CPU), which :func:`~amber.serving.onnx_check.check_model`
    has checked. Besides, onnxruntime is told to fold no constants (its graph optimizations, which
    compute constant subgraphs when the session is created, are off: the graphs served are small)
    and to look for external data in an empty folder, which it may not leave."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingPluginError(
            f"serving {directory / MODEL_FILE} needs onnxruntime ({e}): pip install 'amber-rl[onnx]'",
            path=directory, plugin="onnx_export") from e
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with tempfile.TemporaryDirectory(prefix="amber-onnx-") as empty:
            options.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors: a model it cannot load
        raise CorruptCheckpointError(f"{directory / MODEL_FILE}: onnxruntime cannot load it: {e}",
                                     path=directory / MODEL_FILE) from e


def load_onnx(directory: str | Path, policy_id: str | None = None, *,
              seed: int | None = None) -> ServedPolicy:
    """A :class:`~amber.serve.ServedPolicy` running ``directory/model.onnx`` with onnxruntime.

    :param directory: an export directory (``model.onnx`` and ``model.json``).
    :param policy_id: the id to give it (default: the one ``model.json`` records, else ``default_policy``).
    :param seed: seeds what ``explore=True`` samples with.
    :raises MissingPluginError: onnxruntime is not installed.
    :raises UnservablePolicyError: no ``model.onnx``, or a ``model.json`` this amber does not read.
    :raises UnsafeModelError: a ``model.onnx`` that keeps data in other files, has an operator
        amber's exporter never writes, or computes more than its size allows
        (:mod:`amber.serving.onnx_check`), refused before onnxruntime loads it.
    :raises CorruptCheckpointError: ``model.onnx`` differs from what ``model.json`` records, or a
        ``model.json`` without what serving needs.
    """
    directory = Path(directory)
    meta = read_model_json(directory)
    obs_space, act_space, dist, input_name, input_shape, recorded = _served_facts(directory, meta)
    if policy_id is None and recorded is not None and not isinstance(recorded, str):
        raise CorruptCheckpointError(f"{directory / MODEL_JSON}: its policy_id is "
                                     f"{type(recorded).__name__}, not a string", path=directory / MODEL_JSON)
    data = _model_bytes(directory, meta)
    check_model(data, directory / MODEL_FILE, input_name, input_shape)
    session = _session(directory, data)
    names = [out.name for out in session.get_outputs()]

    def network(obs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(obs, dtype=np.float32).reshape((obs.shape[0], *input_shape))
        return dict(zip(names, session.run(None, {input_name: x}), strict=True))

    pid = policy_id or recorded or DEFAULT_POLICY_ID
    return ServedPolicy(pid, obs_space, act_space, dist, network, source=directory, seed=seed)


def _served_facts(directory: Path, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """What serving takes from ``model.json``, checked: ``(observation space, action space, action
    distribution, input name, input shape without the batch, recorded policy id)``.

    :raises CorruptCheckpointError: a key missing or malformed, or a distribution that does not
        act in the action space (named).
    :raises UnservablePolicyError: an action distribution this amber does not know.
    """
    path = directory / MODEL_JSON
    try:
        spaces = {key: meta[key] for key in ("observation_space", "action_space", "input")}
        for key, value in spaces.items():
            if not isinstance(value, Mapping):
                raise TypeError(f"{key} is {type(value).__name__}, not an object")
        # no more values than model.onnx has bytes: its weights take each observation value (or
        # one-hot column) and give each action's logit (or mean and log_std)
        limit = _recorded_size(meta)
        obs_space = describe_space(spaces["observation_space"], max_elements=limit)
        act_space = describe_space(spaces["action_space"], max_elements=limit)
        dist = meta["action_distribution"]
        if not isinstance(dist, str):
            raise TypeError(f"action_distribution is {type(dist).__name__}, not a string")
        input_name, shape = spaces["input"]["name"], spaces["input"]["shape"]
        if not isinstance(input_name, str) or not isinstance(shape, list) or not shape:
            raise TypeError("input must have a string name and a shape [batch, ...]")
        input_shape = tuple(int(d) for d in shape[1:])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path} lacks what serving needs: {type(e).__name__}: {e}",
                                     path=path) from e
    if dist not in KNOWN_DISTRIBUTIONS:
        raise UnservablePolicyError(f"{path}: unknown action_distribution {dist!r} "
                                    f"(known: {', '.join(KNOWN_DISTRIBUTIONS)})", path=directory)
    misfit = distribution_misfit(dist, act_space)
    if misfit is not None:
        raise CorruptCheckpointError(f"{path}: {misfit}", path=path)
    return obs_space, act_space, dist, input_name, input_shape, meta.get("policy_id")
