"""The ``keras`` exporter: a Keras 3 model of the policy's network, for TensorFlow serving.

From the policy's :class:`amber.export.ModelGraph` alone it builds a Keras 3
functional model (Dense layers holding the policy's weights, and built-in
Keras operations only: no Lambda layer, no custom class), and writes:

- ``saved_model/``: a TensorFlow SavedModel; ``tf.saved_model.load(path)``
  has the signature ``serving_default`` taking ``obs`` (float32
  ``[batch, *obs_shape]``, any batch size) and returning a dict of the
  outputs by name.
- ``model.keras``: the Keras model; ``keras.saving.load_model(path)`` (safe
  mode on) returns it, and calling it on ``obs`` returns the same dict.

Asked for by name (``format="keras"``), it writes this layout for every
policy, torch or tf2. As a tf2 policy's native files (``export_model(dir)``
with no exporter named, and a checkpoint's ``model/`` folder: the engine's
``native`` option), the SavedModel is written at the export directory itself
(``saved_model.pb``, ``variables/``...), as RLlib's tf policies write it, so
``tf.saved_model.load(dir)`` loads it. Either way the loaded object is also
callable: ``tf.saved_model.load(path)(obs)`` returns the dict of outputs. An
empty ``assets/`` folder is not kept (a checkpoint lists files, not folders).

So a torch-trained policy is served by TensorFlow. Needs the ``keras`` extra
(tensorflow and keras 3), and Keras's TensorFlow backend.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import amber
from amber.errors import MissingPluginError
from amber.export import NATIVE_OPTION, ExportError
from amber.registry import ExportedFile, ExporterSpec

if TYPE_CHECKING:
    from amber.export import ModelGraph

__all__ = ["KERAS_FILE", "SAVED_MODEL_DIR", "SPEC", "build_model", "export"]

#: The Keras model file.
KERAS_FILE = "model.keras"
#: The SavedModel directory.
SAVED_MODEL_DIR = "saved_model"
#: What a SavedModel written at the export directory itself consists of (tf2 policies' native files;
#: also ``format="keras"`` of a tf2 policy before amber wrote ``saved_model/`` for it too).
SAVED_MODEL_PARTS = ("saved_model.pb", "variables", "assets", "fingerprint.pb")
#: The pip extra of amber that brings tensorflow and keras 3 (``amber-rl[keras]``).
EXTRA = "keras"


def _runtime() -> tuple[Any, Any]:
    """tensorflow and keras, imported with the TensorFlow backend."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
        import tensorflow as tf
    except ImportError as e:
        raise MissingPluginError(
            f"the keras exporter needs tensorflow and keras 3 ({e}); {SPEC.install_hint}",
            plugin="keras_export",
        ) from e
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise MissingPluginError(
            f"the keras exporter needs keras 3, found keras {version}; {SPEC.install_hint}",
            plugin="keras_export",
        )
    if keras.backend.backend() != "tensorflow":
        raise ExportError(f"the keras exporter needs Keras's tensorflow backend, but keras runs on "
                          f"{keras.backend.backend()!r}: set KERAS_BACKEND=tensorflow")
    return tf, keras


def _layer_name(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", name) or "layer"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


def build_model(graph: ModelGraph) -> Any:
    """The Keras functional model computing ``graph``: ``model(obs) -> {output name: tensor}``.

    :param graph: the network.
    :return: a built ``keras.Model`` holding the graph's weights.
    """
    _, keras = _runtime()
    layers, ops = keras.layers, keras.ops
    taken: set[str] = {"obs"}
    obs = keras.Input(shape=graph.obs_shape, name="obs", dtype="float32")
    pre = graph.preprocess
    if pre.kind == "one_hot":
        # int(obs) - start, one-hot over size categories (out of range: all zeros).
        idx = ops.cast(obs, "int32") - np.int32(pre.start)
        x = ops.one_hot(idx, pre.size, dtype="float32")
    elif len(graph.obs_shape) == 1:
        x = obs
    else:
        x = ops.reshape(obs, (-1, pre.size))

    dense: list[tuple[Any, Any]] = []
    towers: dict[str, Any] = {}
    for tname, tlayers in graph.towers.items():
        h = x
        for i, layer in enumerate(tlayers):
            d = layers.Dense(int(layer.weight.shape[0]), activation=layer.activation,
                             name=_layer_name(f"{tname}_{i}", taken), dtype="float32")
            h = d(h)
            dense.append((d, layer))
        towers[tname] = h

    outputs: dict[str, Any] = {}
    for out in graph.outputs:
        t = towers[out.towers[0]]
        if out.kind == "squeeze":
            value = t[:, 0]
        elif out.kind == "dueling":
            adv = towers[out.towers[1]]
            value = (t + adv) - ops.mean(adv, axis=1, keepdims=True)
        elif out.kind == "clip_log_std":
            half = int(graph.towers[out.towers[0]][-1].weight.shape[0]) // 2
            log_std = ops.clip(t[:, half:], float(out.params["low"]), float(out.params["high"]))
            value = ops.concatenate([t[:, :half], log_std], axis=-1)
        elif out.kind == "identity":
            value = t
        else:
            raise ExportError(f"the keras exporter cannot compute outputs of kind {out.kind!r}")
        outputs[out.name] = layers.Identity(name=_layer_name(out.name, taken))(value)

    model = keras.Model(inputs=obs, outputs=outputs, name="amber_policy")
    for d, layer in dense:
        d.set_weights([np.asarray(layer.weight, np.float32).T, np.asarray(layer.bias, np.float32)])
    return model


def export(graph: ModelGraph, directory: Path, options: Mapping[str, Any]) -> list[Path]:
    """Write ``saved_model/`` and ``model.keras`` into ``directory`` (as a tf2 policy's native
    files: the SavedModel's parts at ``directory`` itself).

    :param graph: the network.
    :param directory: where to write (the engine's staging directory).
    :param options: :data:`amber.export.NATIVE_OPTION` (True: a tf2 policy's native files), which
        amber gives; it declares no option of the user's.
    :return: the paths written.
    """
    tf, keras = _runtime()
    model = build_model(graph)
    directory = Path(directory)
    keras_path = directory / KERAS_FILE
    model.save(keras_path)
    module = tf.Module()
    module.model = model
    spec = tf.TensorSpec([None, *graph.obs_shape], tf.float32, name="obs")
    module.__call__ = tf.function(lambda obs: model(obs, training=False), input_signature=[spec])
    at_root = bool(options.get(NATIVE_OPTION))  # native to tf2 only
    saved = directory if at_root else directory / SAVED_MODEL_DIR
    tf.saved_model.save(module, str(saved), signatures={"serving_default": module.__call__})
    assets = saved / "assets"  # empty: no data, and a checkpoint's model/ folder would not list it
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()
    if at_root:
        return [directory / name for name in SAVED_MODEL_PARTS if (directory / name).exists()] + [keras_path]
    return [saved, keras_path]


#: This exporter, as registered: any policy's network for TensorFlow serving; native to tf2 policies.
SPEC = ExporterSpec(
    name="keras", export=export, extra=EXTRA,
    description="saved_model/ (serving_default, input obs) and model.keras: served by TensorFlow "
                "alone, export_model(dir, format='keras')",
    files=(
        ExportedFile(SAVED_MODEL_DIR, "tf.saved_model.load(path).signatures['serving_default'](obs=obs)",
                     "tensorflow"),
        ExportedFile(KERAS_FILE, "keras.saving.load_model(path)(obs) -> dict of outputs", "keras"),
        *(ExportedFile(name, "tf.saved_model.load(directory)(obs) -> dict of outputs (a tf2 policy's "
                             "native files)", "tensorflow") for name in SAVED_MODEL_PARTS),
    ),
    native_for=("tf2",),
)


@amber.hookimpl
def amber_register_exporters() -> list[ExporterSpec]:
    """Register the ``keras`` exporter."""
    return [SPEC]
