"""amber.serve.load_policy against hostile files: what a security review found, each pinned by a test.

An ONNX export whose ``model.onnx`` reads another file (external data at a
path of the attacker's choice), a few hundred bytes asking onnxruntime for
gigabytes (constant folding, or amber's own operators chained to grow), a
space description whose scalar bounds are broadcast to a huge shape, an
RLlib checkpoint whose policy folder is a link, and a policy served from a
URL that named the deleted download instead of the URL. Every hostile file
is built here.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
gym = pytest.importorskip("gymnasium")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
msgpack = pytest.importorskip("msgpack")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from amber.algorithms.dqn.dqn_torch_policy import DQNTorchPolicy  # noqa: E402
from amber.algorithms.sac.sac_torch_policy import SACTorchPolicy  # noqa: E402
from amber.digest import format_digest, new_hasher  # noqa: E402
from amber.errors import CorruptCheckpointError, InvalidStateError, UnsafeContentError  # noqa: E402
from amber.policy.torch_policy import TorchPolicy  # noqa: E402
from amber.serve import load_policy  # noqa: E402
from amber.serving.load import UnsafeModelError  # noqa: E402
from amber.serving.onnx_check import MIN_VALUE_BUDGET  # noqa: E402
from amber.serving.policy import MAX_SPACE_ELEMENTS, describe_space  # noqa: E402
from tests.treeutil import recompute_digests  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rllib-2.10"
SECRET = b"TOPSECRET-API-KEY-1234"


def cart_policy() -> TorchPolicy:
    """A tiny PPO policy: Box(4) observations, Discrete(2) actions."""
    return TorchPolicy(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(2),
                       {"model": {"fcnet_hiddens": [8]}, "seed": 0})


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A genuine ONNX export of :func:`cart_policy` (opset 17)."""
    out = tmp_path_factory.mktemp("secure") / "export"
    cart_policy().export_model(out, onnx=17)
    return out


def hostile_export(export: Path, where: Path, model: onnx.ModelProto) -> Path:
    """A copy of ``export`` whose ``model.onnx`` is ``model``, its size and digest recorded as a
    genuine export's are (so the digest check passes: the model itself must be refused)."""
    out = Path(shutil.copytree(export, where))
    data = model.SerializeToString()
    (out / "model.onnx").write_bytes(data)
    meta = json.loads((out / "model.json").read_text())
    hasher = new_hasher()
    hasher.update(data)
    meta["files"]["model.onnx"].update(size=len(data), digest=format_digest(hasher))
    (out / "model.json").write_text(json.dumps(meta))
    return out


def graph_model(nodes, initializers, outputs=("action_dist_inputs",)) -> onnx.ModelProto:
    """A model taking ``obs`` [batch, 4] and giving ``outputs``."""
    obs = helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    model = helper.make_model(helper.make_graph(nodes, "g", [obs], outs, initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def ints(name: str, values) -> TensorProto:
    """An int64 initializer stored as raw data, as amber's exporter stores its own."""
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


@pytest.fixture
def no_session(monkeypatch):
    """Fail the test if onnxruntime is asked to load anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("onnxruntime was handed a model serving should have refused")

    monkeypatch.setattr(ort, "InferenceSession", refuse)


def external_data_model(location: str, size: int) -> onnx.ModelProto:
    """A model whose initializer ``leak`` is ``size`` bytes read from ``location``, output as-is."""
    leak = TensorProto(name="leak", data_type=TensorProto.UINT8, dims=[size],
                       data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(size))):
        leak.external_data.add(key=key, value=value)
    nodes = [helper.make_node("Slice", ["obs", "zero", "two", "one"], ["action_dist_inputs"]),
             helper.make_node("Identity", ["leak"], ["leak_out"])]
    inits = [leak, ints("zero", [0]), ints("two", [2]), ints("one", [1])]
    model = graph_model(nodes, inits, ("action_dist_inputs", "leak_out"))
    model.graph.output[1].type.tensor_type.elem_type = TensorProto.UINT8
    return model


# -- ONNX: external data ------------------------------------------------------------------------


def test_onnx_external_data_is_refused_naming_model_and_location(export, tmp_path, monkeypatch, no_session):
    """The model named a file resolved against the working directory, and served its bytes."""
    (tmp_path / "secret.txt").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    bad = hostile_export(export, tmp_path / "bad", external_data_model("secret.txt", len(SECRET)))
    (bad / "secret.txt").write_bytes(SECRET)  # beside the model too: no folder is read
    with pytest.raises(UnsafeModelError, match=r"model\.onnx.*'leak'.*external data at 'secret\.txt'") as info:
        load_policy(bad)
    assert isinstance(info.value, UnsafeContentError) and info.value.path == str(bad / "model.onnx")


@pytest.mark.skipif(tuple(map(int, ort.__version__.split(".")[:2])) < (1, 21),
                    reason="onnxruntime takes a folder for external data from 1.21")
def test_onnxruntime_itself_reads_no_external_data(tmp_path, monkeypatch):
    """Defence in depth: the session serving makes reads no external data even for a model that
    the check did not see (it looks for it in an empty folder, which it may not leave)."""
    from amber.serving.onnx import _session

    (tmp_path / "secret.txt").write_bytes(SECRET)
    monkeypatch.chdir(tmp_path)
    for location in ("secret.txt", f"../{tmp_path.name}/secret.txt", str(tmp_path / "secret.txt")):
        data = external_data_model(location, len(SECRET)).SerializeToString()
        with pytest.raises(CorruptCheckpointError, match="onnxruntime cannot load it"):
            _session(tmp_path, data)


# -- ONNX: a small file asking for a large computation --------------------------------------------


def test_onnx_operator_amber_never_writes_is_refused(export, tmp_path, no_session):
    """ConstantOfShape([2.5e8]): 377 bytes, which onnxruntime folded into a 1 GB tensor when loading."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("ReduceSum", ["big"], ["total"], keepdims=1),
             helper.make_node("Slice", ["obs", "zero", "two", "one"], ["head"]),
             helper.make_node("Add", ["head", "total"], ["action_dist_inputs"])]
    inits = [ints("shape", [250_000_000]), ints("zero", [0]), ints("two", [2]), ints("one", [1])]
    bomb = hostile_export(export, tmp_path / "bomb", graph_model(nodes, inits))
    assert (bomb / "model.onnx").stat().st_size < 1000
    with pytest.raises(UnsafeModelError, match="'ConstantOfShape' node, an operator amber's exporter never"):
        load_policy(bomb)


def squaring_chain(rounds: int) -> list:
    """Amber's own operators, each round squaring a tensor's size: [batch, n, 1] + [batch, 1, n]."""
    nodes, x, n = [helper.make_node("Identity", ["obs"], ["x0"])], "x0", 4
    for i in range(rounds):
        nodes += [helper.make_node("Reshape", [x, f"col{i}"], [f"c{i}"]),
                  helper.make_node("Reshape", [x, f"row{i}"], [f"r{i}"]),
                  helper.make_node("Add", [f"c{i}", f"r{i}"], [f"x{i + 1}"])]
        x, n = f"x{i + 1}", n * n
    return nodes


def test_onnx_allowed_operators_that_grow_are_refused(export, tmp_path, no_session):
    """Five rounds of Reshape and a broadcasting Add turn 4 values into 2**64 (a few hundred bytes)."""
    rounds, n, inits = 5, 4, []
    for i in range(rounds):
        inits += [ints(f"col{i}", [-1, n, 1]), ints(f"row{i}", [-1, 1, n])]
        n *= n
    nodes = squaring_chain(rounds) + [helper.make_node("Flatten", [f"x{rounds}"], ["action_dist_inputs"])]
    bomb = hostile_export(export, tmp_path / "grow", graph_model(nodes, inits))
    with pytest.raises(UnsafeModelError, match=rf"more than {MIN_VALUE_BUDGET} values for one observation"):
        load_policy(bomb)


@pytest.mark.parametrize("case", ["batch-folded", "batch-broadcast", "concat-doubling"])
def test_onnx_graphs_that_grow_with_the_batch_or_double_are_refused(export, tmp_path, no_session, case):
    """The batch stays each tensor's first dimension and is never multiplied with itself (or folded
    into another dimension); a chain of Concat nodes, each doubling its input, meets the budget."""
    if case == "batch-folded":  # [batch, 4] → [1, 4 * batch]
        nodes = [helper.make_node("Reshape", ["obs", "to_flat"], ["action_dist_inputs"])]
        inits, want = [ints("to_flat", [1, -1])], "moves its batch"
    elif case == "batch-broadcast":  # [batch, 4, 1] + [batch, 4] → [batch, batch, 4]
        nodes = [helper.make_node("Reshape", ["obs", "to_col"], ["col"]),
                 helper.make_node("Add", ["col", "obs"], ["action_dist_inputs"])]
        inits, want = [ints("to_col", [-1, 4, 1])], "do not broadcast together"
    else:
        nodes, x = [], "obs"
        for i in range(40):
            nodes.append(helper.make_node("Concat", [x, x], [f"d{i}"], axis=1))
            x = f"d{i}"
        inits, want = [], "more than .* values for one observation"
    bomb = hostile_export(export, tmp_path / case, graph_model(nodes, inits))
    with pytest.raises(UnsafeModelError, match=want):
        load_policy(bomb)


# -- ONNX: what amber's exporter writes is served, at every opset ----------------------------------


def _newest_opset() -> int:
    return onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("opset", [11, 17, 18, "newest"])
@pytest.mark.parametrize("case", ["dqn_dueling_discrete_obs", "sac", "ppo_box"])
def test_genuine_exports_pass_the_check_at_every_opset(tmp_path, case, opset):
    """Every graph amber's exporter writes (one-hot Discrete observations, dueling heads, whose
    ReduceMean takes its axes as an input from opset 18, SAC's clipped log_std) still loads."""
    opset = _newest_opset() if opset == "newest" else opset
    if case == "dqn_dueling_discrete_obs":
        policy = DQNTorchPolicy(gym.spaces.Discrete(5, start=2), gym.spaces.Discrete(3),
                                {"model": {"fcnet_hiddens": [8]}, "hiddens": [6], "seed": 1})
        obs = np.array([2, 3, 6])
    elif case == "sac":
        policy = SACTorchPolicy(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-2, 2, (2,), np.float32),
                                {"seed": 2})
        obs = np.linspace(-1, 1, 9, dtype=np.float32).reshape(3, 3)
    else:
        policy = TorchPolicy(gym.spaces.Box(-1, 1, (2, 3), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32),
                             {"model": {"fcnet_hiddens": [8, 8]}, "seed": 3})
        obs = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 2, 3)
    policy.export_model(tmp_path / "export", onnx=opset)
    served = load_policy(tmp_path / "export")
    got, _, info = served.compute_actions(obs)
    want, _, want_info = policy.compute_actions(obs, explore=False)
    np.testing.assert_allclose(info["action_dist_inputs"], want_info["action_dist_inputs"], atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- spaces: sizes bounded before anything is built -----------------------------------------------


def _edit_policy_state(checkpoint: Path, edit) -> None:
    path = checkpoint / "policy_state.msgpck"
    tree = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))
    edit(tree["policy_spec"])
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    recompute_digests(checkpoint)


def _scalar(value: float) -> dict:
    return {b"nd": False, b"type": "<f4", b"data": np.float32(value).tobytes()}


@pytest.mark.parametrize("shape", [[2**28], [100_000]])  # 1 GiB per bound; more than the weights hold
def test_a_policy_checkpoint_space_larger_than_its_weights_is_refused_before_allocating(tmp_path, shape):
    """A 6 KB policy state whose Box space has scalar bounds and a huge shape took seconds and
    gigabytes (the bounds broadcast to it) before anything refused it."""
    ckpt = Path(cart_policy().export_checkpoint(tmp_path / "pc", format="msgpack"))
    _edit_policy_state(ckpt, lambda spec: spec.update(observation_space={
        "type": "Box", "low": _scalar(-1), "high": _scalar(1), "dtype": "<f4", "shape": shape}))
    with pytest.raises(InvalidStateError, match=rf"a Box of shape \[{shape[0]}\]: it may hold at most \d+ values"):
        load_policy(ckpt)


def test_a_model_json_space_larger_than_its_model_is_refused(export, tmp_path):
    """model.json's Box of shape [2**29] with scalar bounds: 4 GiB asked for by a few bytes."""
    bad = Path(shutil.copytree(export, tmp_path / "space"))
    meta = json.loads((bad / "model.json").read_text())
    meta["observation_space"] = {"type": "Box", "shape": [2**29], "dtype": "float32", "low": 0, "high": 1}
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpointError, match=r"model\.json.*a Box of shape \[536870912\]"):
        load_policy(bad)


@pytest.mark.parametrize("space", [
    {"type": "Box", "low": 0, "high": 1, "shape": [4], "dtype": "S2000000000"},  # 2 GB per string
    {"type": "Box", "low": 0, "high": 1, "shape": [4], "dtype": "(1000000,)f4"},  # a subarray per value
    {"type": "Box", "low": 0, "high": 1, "shape": [4], "dtype": "O"},
    {"type": "Box", "low": 0, "high": 1, "shape": [4], "dtype": {"names": ["a"], "formats": ["f4"]}},
    {"type": "Box", "low": 0, "high": 1, "shape": [MAX_SPACE_ELEMENTS + 1]},
    {"type": "Box", "low": 0, "high": 1, "shape": [2**40, 0]},
    {"type": "Box", "low": 0, "high": 1, "shape": [-1]},
    {"type": "Box", "low": 0, "high": 1, "shape": [1] * 33},
    {"type": "Discrete", "n": 2**40},
    {"type": "Discrete", "n": 0},
    {"type": "Discrete", "n": 2.5},
    {"type": "Discrete", "n": 4, "start": 2**63 - 2},
])
def test_describe_space_checks_sizes_and_dtypes_before_building(space):
    with pytest.raises(ValueError, match="Box|Discrete|n is|start"):
        describe_space(space)


def test_describe_space_still_reads_what_amber_writes():
    box = describe_space({"type": "Box", "low": -1.0, "high": [1.0, 2.0], "shape": [2], "dtype": "float32"})
    assert box["shape"] == (2,) and box["high"].tolist() == [1.0, 2.0] and box["low"].tolist() == [-1.0, -1.0]
    assert describe_space({"type": "Box", "low": np.zeros((2, 3)), "high": np.ones((2, 3)),
                           "dtype": "<f4"})["shape"] == (2, 3)
    assert describe_space({"type": "Discrete", "n": np.int64(3), "start": -1}) == \
        {"type": "Discrete", "n": 3, "start": -1}


# -- links, URLs ----------------------------------------------------------------------------------


def test_an_rllib_policy_folder_that_is_a_link_is_refused(tmp_path):
    """policies/default_policy linking to a policy elsewhere: Policy.from_checkpoint refused it,
    load_policy served whatever it pointed to."""
    ckpt = Path(shutil.copytree(FIXTURES / "ppo_msgpack", tmp_path / "rllib"))
    assert load_policy(ckpt).policy_id == "default_policy"  # as it is, it is served
    elsewhere = Path(shutil.copytree(FIXTURES / "ppo_policy_msgpack", tmp_path / "elsewhere"))
    shutil.rmtree(ckpt / "policies" / "default_policy")
    (ckpt / "policies" / "default_policy").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CorruptCheckpointError, match="default_policy: is a symbolic link"):
        load_policy(ckpt)
    shutil.rmtree(ckpt / "policies" / "default_policy", ignore_errors=True)
    (ckpt / "policies" / "default_policy").unlink(missing_ok=True)
    shutil.move(ckpt / "policies", tmp_path / "real-policies")
    (ckpt / "policies").symlink_to(tmp_path / "real-policies", target_is_directory=True)
    with pytest.raises(CorruptCheckpointError, match="policies: is a symbolic link"):
        load_policy(ckpt)


def test_a_policy_served_from_a_url_names_the_url(tmp_path):
    """Its source and repr named the deleted download folder (/tmp/amber-download-...)."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    url = f"memory://amber-tests/{uuid.uuid4().hex}"
    try:
        cart_policy().export_checkpoint(f"{url}/policy", format="msgpack")
        served = load_policy(f"{url}/policy")
        assert served.source == f"{url}/policy" and f"source='{url}/policy'" in repr(served)
        fs.put(str(FIXTURES / "ppo_msgpack"), f"{url[len('memory://') - 1:]}/rllib", recursive=True)
        served = load_policy(f"{url}/rllib/")  # an algorithm checkpoint: its policy's folder
        assert served.source == f"{url}/rllib/policies/default_policy"
    finally:
        if fs.exists(url[len("memory://") - 1:]):
            fs.rm(url[len("memory://") - 1:], recursive=True)


# -- ONNX: the value budget follows the weights, not the file's bytes --------------------------------


def amplifier(n: int) -> onnx.ModelProto:
    """A few thousand weights that compute ``n * n`` values per observation: Gemm, then Reshape to
    [batch, 1, 1] broadcast by two Adds to [batch, n, n], then ReduceMean and a Gemm down to 2."""
    floats = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)  # noqa: E731
    inits = [floats("w1", np.ones((4, 1))), ints("to_cell", [-1, 1, 1]), floats("col", np.ones((1, n, 1))),
             floats("row", np.ones((1, 1, n))), ints("axes", [2]), floats("w2", np.ones((n, 2)) / n)]
    nodes = [helper.make_node("Gemm", ["obs", "w1"], ["g"]),
             helper.make_node("Reshape", ["g", "to_cell"], ["cell"]),
             helper.make_node("Add", ["cell", "col"], ["column"]),
             helper.make_node("Add", ["column", "row"], ["square"]),
             helper.make_node("ReduceMean", ["square", "axes"], ["mean"], keepdims=0),
             helper.make_node("Gemm", ["mean", "w2"], ["action_dist_inputs"])]
    return graph_model(nodes, inits)


def test_a_small_model_computing_a_million_values_per_observation_is_refused(export, tmp_path, no_session):
    """16 KB of model computed 1M values per observation: the budget was the file's bytes or 2**20,
    and a batch of 256 took 1.5 GB. It is the model's weights (4 006 here) or a small floor."""
    bomb = hostile_export(export, tmp_path / "amp", amplifier(1000))
    assert (bomb / "model.onnx").stat().st_size < 20_000
    with pytest.raises(UnsafeModelError, match=r"more than \d+ values for one observation.*'square'"):
        load_policy(bomb)


def test_a_padded_file_does_not_raise_the_budget(export, tmp_path, no_session):
    """A 16 MB doc string raised the budget to 16M values: a file's bytes other than its weights buy nothing."""
    model = amplifier(300)  # 90 000 values per observation, 1 206 weights
    model.doc_string = "x" * (16 << 20)
    with pytest.raises(UnsafeModelError, match="more than .* values for one observation"):
        load_policy(hostile_export(export, tmp_path / "padded", model))


@pytest.mark.parametrize("case", ["ppo", "dqn_dueling", "sac", "image_obs", "wide_discrete_obs", "one_input"])
def test_genuine_exports_of_any_size_pass_the_weight_budget(tmp_path, case):
    """Large networks compute far fewer values than their weights; a large observation before a
    tiny layer, a one-hot Discrete observation, a one-value input before a wide layer still pass."""
    box = lambda *shape: gym.spaces.Box(-1, 1, shape, np.float32)  # noqa: E731
    wide = {"fcnet_hiddens": [1024, 1024, 1024]}
    policy = {
        "ppo": lambda: TorchPolicy(box(4), gym.spaces.Discrete(2), {"model": wide, "seed": 0}),
        "dqn_dueling": lambda: DQNTorchPolicy(box(4), gym.spaces.Discrete(3),
                                              {"model": wide, "hiddens": [1024], "seed": 1}),
        "sac": lambda: SACTorchPolicy(box(3), box(2), {"model": wide, "seed": 2}),
        "image_obs": lambda: TorchPolicy(box(84, 84, 4), gym.spaces.Discrete(6),
                                         {"model": {"fcnet_hiddens": [1], "vf_share_layers": True}, "seed": 0}),
        "wide_discrete_obs": lambda: DQNTorchPolicy(gym.spaces.Discrete(50_000), gym.spaces.Discrete(3),
                                                    {"model": {"fcnet_hiddens": [1]}, "hiddens": [1], "seed": 1}),
        "one_input": lambda: SACTorchPolicy(box(1), box(1), {"model": {"fcnet_hiddens": [8192]}, "seed": 2}),
    }[case]()
    policy.export_model(tmp_path / "export", onnx=17)
    served = load_policy(tmp_path / "export")
    obs = np.zeros((2, *policy.observation_space.shape), policy.observation_space.dtype)
    np.testing.assert_allclose(served.compute_actions(obs)[2]["action_dist_inputs"],
                               policy.compute_actions(obs, explore=False)[2]["action_dist_inputs"], atol=1e-4)
