"""Exported graphs, loaded raw with their own runtime, run an empty batch of observations.

docs/export.md says the batch dimension is dynamic in every format: users call
``torch.export.load(p).module()(obs)``, an onnxruntime session or a Keras/TF
model on whatever batch they hold, an empty one included. Each case is exported
with every exporter, loaded as the docs show, and run on batches of 0 and 3:
the outputs have the policy's shapes and, for the batch of 3, its values.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from amber.export import Dense, ModelGraph, Output, Preprocess, export_model
from amber.policy.torch_policy import TorchPolicy, action_info

# keras's tensorflow backend calls np.array(x) on tensors that lack numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TOL = 1e-5
BATCHES = (0, 3)
#: ONNX opsets written for every case (Flatten and ReduceMean across them).
OPSETS = (11, 17, 18)


def _ppo(env: str, seed: int) -> TorchPolicy:
    spaces = gym.make(env)
    return TorchPolicy(spaces.observation_space, spaces.action_space,
                       {"model": {"fcnet_hiddens": [16, 8]}, "seed": seed})


def _dqn() -> TorchPolicy:
    from amber.algorithms.dqn import DQNConfig

    algo = DQNConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [16]}).debugging(seed=1).build()
    policy = algo.get_policy()
    algo.stop()
    return policy


def _box_graph(obs_shape: tuple[int, ...]) -> ModelGraph:
    """A PPO-like graph over Box observations of ``obs_shape`` (``()``: one number each)."""
    rng = np.random.default_rng(len(obs_shape))
    n_in = int(np.prod(obs_shape))

    def dense(n_out: int, n: int, act: str | None) -> Dense:
        return Dense(rng.standard_normal((n_out, n)).astype(np.float32),
                     rng.standard_normal(n_out).astype(np.float32), act)

    obs_space = gym.spaces.Box(-1.0, 1.0, obs_shape, np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    towers = {"pi": [dense(8, n_in, "relu"), dense(4, 8, None)], "vf": [dense(1, n_in, None)]}
    return ModelGraph(obs_shape, Preprocess("flatten", n_in), towers,
                      [Output("action_dist_inputs", "clip_log_std", ("pi",), {"low": -1.0, "high": 0.5}),
                       Output("vf_preds", "squeeze", ("vf",))],
                      action_info(obs_space, act_space, squashed=True), framework="torch")


CASES: dict[str, Callable[[], object]] = {
    "ppo-pendulum": lambda: _ppo("Pendulum-v1", 0),
    "ppo-cartpole": lambda: _ppo("CartPole-v1", 1),
    "dqn-cartpole": _dqn,
    "ppo-discrete-obs": lambda: TorchPolicy(gym.spaces.Discrete(5, start=-1), gym.spaces.Discrete(3),
                                            {"model": {"fcnet_hiddens": [8]}, "seed": 2}),
    "graph-box-2x3": lambda: _box_graph((2, 3)),
    "graph-box-scalar": lambda: _box_graph(()),
}


def _load_torch(d: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    import torch

    module = torch.export.load(str(d / "model.pt2")).module()
    return lambda obs: {k: v.numpy() for k, v in module(torch.from_numpy(obs)).items()}


def _load_onnx(opset: int) -> Callable[[Path], Callable[[np.ndarray], dict[str, np.ndarray]]]:
    def load(d: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(d / f"opset{opset}" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        return lambda obs: dict(zip(names, session.run(None, {"obs": obs}), strict=True))
    return load


def _load_saved_model(d: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    tf = pytest.importorskip("tensorflow")
    serve = tf.saved_model.load(str(d / "keras" / "saved_model")).signatures["serving_default"]
    return lambda obs: {k: v.numpy() for k, v in serve(obs=tf.constant(obs)).items()}


def _load_keras(d: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    model = keras.saving.load_model(str(d / "keras" / "model.keras"))
    return lambda obs: {k: np.asarray(v) for k, v in model(obs).items()}


LOADERS = {"torch": _load_torch, **{f"onnx{o}": _load_onnx(o) for o in OPSETS},
           "saved_model": _load_saved_model, "keras": _load_keras}


def _have(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, ModelGraph, Path]]:
    """Every case exported with every exporter whose runtime is installed."""
    out = {}
    for cid, make in CASES.items():
        obj = make()
        graph = obj if isinstance(obj, ModelGraph) else obj.export_graph()
        d = tmp_path_factory.mktemp(cid)
        export_model(graph, d, format="torch")
        if _have("onnx", "onnxruntime"):
            for opset in OPSETS:
                export_model(graph, d / f"opset{opset}", onnx=opset)
        if _have("tensorflow", "keras"):
            export_model(graph, d / "keras", format="keras")
        out[cid] = (obj, graph, d)
    return out


def _expected(obj: object, graph: ModelGraph, obs: np.ndarray) -> dict[str, np.ndarray]:
    """The policy's own outputs for ``obs`` (a graph's: its numpy reference, for a batch of 3)."""
    if isinstance(obj, ModelGraph):
        return graph.forward_numpy(obs)  # (an empty batch too: it reshaped to [n, -1] before)
    _, _, info = obj.compute_actions(obs, explore=False)
    return {name: info[name] for name in graph.output_names}


@pytest.mark.parametrize("runtime", list(LOADERS))
@pytest.mark.parametrize("cid", list(CASES))
def test_raw_export_runs_an_empty_batch(exports, cid: str, runtime: str) -> None:
    obj, graph, d = exports[cid]
    run = LOADERS[runtime](d)
    rng = np.random.default_rng(7)
    for n in BATCHES:
        if graph.preprocess.kind == "one_hot":  # Discrete: integer values inside the space
            start = graph.preprocess.start
            obs = rng.integers(start, start + graph.preprocess.size, size=n).astype(np.float32)
        else:
            obs = rng.uniform(-1, 1, size=(n, *graph.obs_shape)).astype(np.float32)
        got = run(obs)
        want = _expected(obj, graph, obs)
        assert sorted(got) == sorted(graph.output_names)
        for name in graph.output_names:
            assert got[name].shape == want[name].shape, (runtime, n, name)
            assert got[name].dtype == np.float32, (runtime, n, name)
            np.testing.assert_allclose(got[name], want[name], atol=TOL, rtol=TOL, err_msg=f"{runtime} {n} {name}")
