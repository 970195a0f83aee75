"""``amber export``: policy and algorithm checkpoints to model files; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from amber.cli import CliState, cli
from amber.export import weights_digest
from amber.utils.checkpoints import verify

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def invoke(pm, *args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], obj=CliState(plugin_manager=pm))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("amber: error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A single-policy algorithm checkpoint, a two-policy one and a policy checkpoint."""
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    tmp = tmp_path_factory.mktemp("ckpts")
    single = PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]}).build()
    multi = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
             .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=lambda aid, *a, **k: f"p{aid}")
             .training(model={"fcnet_hiddens": [8]}).build())
    out = {
        "algo": Path(single.save(tmp / "algo").checkpoint.path),
        "multi": Path(multi.save(tmp / "multi").checkpoint.path),
        "policy": Path(single.get_policy().export_checkpoint(tmp / "policy")),
        "digests": {"default_policy": weights_digest(single.get_policy().export_graph()),
                    "p0": weights_digest(multi.get_policy("p0").export_graph()),
                    "p1": weights_digest(multi.get_policy("p1").export_graph())},
    }
    single.stop()
    multi.stop()
    return out


def digest(directory: Path) -> str:
    return json.loads((directory / "model.json").read_text())["weights_digest"]


def test_policy_checkpoint(pm, checkpoints, tmp_path):
    result = invoke(pm, "export", checkpoints["policy"], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "model.pt2, model.json" in result.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["model.json", "model.pt2"]
    assert digest(tmp_path / "out") == checkpoints["digests"]["default_policy"]


def test_algorithm_checkpoint_with_one_policy(pm, checkpoints, tmp_path):
    result = invoke(pm, "export", checkpoints["algo"], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert digest(tmp_path / "out") == checkpoints["digests"]["default_policy"]


def test_algorithm_checkpoint_each_policy_in_its_folder(pm, checkpoints, tmp_path):
    result = invoke(pm, "export", checkpoints["multi"], tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["p0", "p1"]
    for pid in ("p0", "p1"):
        assert digest(tmp_path / "out" / pid) == checkpoints["digests"][pid]


def test_one_policy_with_policy_option(pm, checkpoints, tmp_path):
    result = invoke(pm, "export", checkpoints["multi"], tmp_path / "out", "--policy", "p1")
    assert result.exit_code == 0, result.output
    assert digest(tmp_path / "out") == checkpoints["digests"]["p1"]


def test_onnx(pm, checkpoints, tmp_path):
    pytest.importorskip("onnx")
    result = invoke(pm, "export", checkpoints["algo"], tmp_path / "out", "--onnx", "17")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["model.json", "model.onnx"]
    assert json.loads((tmp_path / "out" / "model.json").read_text())["files"]["model.onnx"]["opset"] == 17


def test_keras(pm, checkpoints, tmp_path):
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    result = invoke(pm, "export", checkpoints["policy"], tmp_path / "out", "--format", "keras")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["model.json", "model.keras", "saved_model"]


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/nothing", "{tmp}/out"], "checkpoint"),
    (["{multi}", "{tmp}/out", "--policy", "p7"], "policy 'p7' is not in this checkpoint; policies present: p0, p1"),
    (["{policy}", "{tmp}/out", "--policy", "p7"], "--policy picks a policy of an algorithm checkpoint"),
    (["{algo}", "{tmp}/out", "--format", "tflite"], "unknown exporter 'tflite'; known exporters: keras, onnx, torch"),
    (["{algo}", "{tmp}/out", "--onnx", "3"], "opset 3 is not supported"),
    (["{multi}", "{tmp}/out", "--onnx", "3"], "opset 3 is not supported"),
    (["{algo}", "{tmp}/link"], "symbolic link"),
    (["{algo}", "{algo}"], "refusing to export into {algo}: it is a checkpoint"),
    (["{algo}", "{multi}/policies/p0"], "refusing to export into {multi}/policies/p0: it is a checkpoint"),
    (["{algo}", "{algo}/model"], "it is inside the checkpoint {algo}, whose checkpoint.json would not list"),
], ids=["not-a-checkpoint", "unknown-policy", "policy-option-on-policy-checkpoint", "unknown-format",
        "bad-opset", "bad-opset-of-several-policies", "symlinked-dir", "into-the-checkpoint",
        "into-another-checkpoint", "inside-the-checkpoint"])
def test_bad_input_is_one_line_exit_2(pm, checkpoints, tmp_path, args, message):
    if "--onnx" in args:
        pytest.importorskip("onnx")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    paths = {k: v for k, v in checkpoints.items() if k != "digests"}
    result = invoke(pm, "export", *[a.format(tmp=tmp_path, **paths) for a in args])
    assert message.format(**paths) in one_error_line(result)
    assert not (tmp_path / "out").exists()  # a failed export leaves no directory behind
    assert os.listdir(tmp_path / "real") == []
    assert all(verify(paths[k]).ok for k in ("algo", "multi", "policy"))  # no checkpoint was touched


def test_opset_zero_is_refused(pm, checkpoints, tmp_path):
    """``--onnx 0`` is no opset (the Python API's onnx=0 means the native files)."""
    result = invoke(pm, "export", checkpoints["algo"], tmp_path / "out", "--onnx", "0")
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output
    assert not (tmp_path / "out").exists()


def test_formats_lists_the_exporters(pm):
    result = invoke(pm, "formats")
    assert result.exit_code == 0, result.output
    exporters = result.stdout[result.stdout.index("exporters"):]
    for name, extra in (("torch", "-"), ("onnx", "amber-rl[onnx]"), ("keras", "amber-rl[keras]")):
        row = next(line for line in exporters.splitlines() if f" {name} " in line)
        assert f"{name}_export" in row and extra in row, row


def test_plugins_lists_the_exporter_plugins(pm):
    result = invoke(pm, "plugins")
    assert result.exit_code == 0, result.output
    for name in ("torch_export", "onnx_export", "keras_export"):
        row = next(line for line in result.stdout.splitlines() if f" {name} " in line)
        assert "amber_register_exporters" in row and "built in" in row, row
