"""Without torch (or gymnasium), as on a serving host (amber installed with ``--no-deps``).

What needs them said "its policy state does not fit what loads it:
ModuleNotFoundError: No module named 'torch'", an InvalidStateError that
reads as a bad checkpoint, and ``amber train`` died with a traceback. Now it
is a :class:`~amber.errors.MissingPluginError` naming the module and how to
install it, and the CLI says so in one ``amber: error:`` line (exit 2). The
missing modules are faked in a child process by a package of that name,
first on sys.path, whose import fails as a missing one does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amber.errors import InvalidStateError, MissingPluginError, state_errors

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import json, sys
    from amber.algorithms.algorithm import Algorithm
    from amber.errors import MissingPluginError
    from amber.policy.policy import Policy
    from amber.serve import load_policy

    out = {}
    for name, call in [("policy", lambda: Policy.from_checkpoint(sys.argv[1])),
                       ("algorithm", lambda: Algorithm.from_checkpoint(sys.argv[2]))]:
        try:
            call()
            out[name] = "loaded"
        except Exception as e:
            out[name] = [type(e).__name__, isinstance(e, MissingPluginError), str(e)]
    out["served"] = int(load_policy(sys.argv[1]).compute_single_action([0.0, 0.0, 0.0, 0.0])[0])
    print(json.dumps(out))
""")


def _without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """The environment of a child process in which ``modules`` cannot be imported."""
    shadow = tmp_path / "shadow"
    for module in modules:
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n")
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """A CartPole PPO algorithm checkpoint and its policy's, both msgpack."""
    from amber.algorithms.ppo import PPOConfig

    algo = (PPOConfig().environment("CartPole-v1").training(model={"fcnet_hiddens": [8]})
            .debugging(seed=0).build())
    root = tmp_path_factory.mktemp("no_torch")
    path = Path(algo.save(root / "algo", format="msgpack").checkpoint.path)
    policy = root / "policy"
    algo.get_policy().export_checkpoint(policy, format="msgpack")
    algo.stop()
    return path, policy


def test_state_errors_says_a_missing_module_is_missing_not_a_bad_state():
    with pytest.raises(MissingPluginError) as e, state_errors("/ck", "its policy state"):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    assert not isinstance(e.value, InvalidStateError) and e.value.path == "/ck"
    message = str(e.value)
    assert message.startswith("/ck: loading its policy state needs torch, which cannot be imported here")
    assert "pip install torch" in message and "docs/serving.md" in message
    assert "does not fit" not in message
    with pytest.raises(MissingPluginError, match=r"needs the module 'mylib', .*provides it"), \
            state_errors("/ck"):
        raise ModuleNotFoundError("No module named 'mylib.sub'", name="mylib.sub")
    with pytest.raises(InvalidStateError, match="does not fit"), state_errors("/ck"):  # as before
        raise KeyError("weights")


@pytest.mark.parametrize(("missing", "needed"), [(("torch",), "torch"), (("torch", "gymnasium"), "gymnasium")])
def test_loading_without_torch_or_gymnasium_names_what_to_install(checkpoints, tmp_path, missing, needed):
    algo_path, policy_path = checkpoints
    proc = subprocess.run([sys.executable, "-c", CHILD, str(policy_path), str(algo_path)],
                          capture_output=True, text=True, timeout=300, env=_without(tmp_path, *missing))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    name, is_missing, message = out["policy"]
    assert (name, is_missing) == ("MissingPluginError", True)
    assert "needs torch, which cannot be imported here (No module named 'torch')" in message
    assert "pip install torch" in message and "does not fit" not in message
    name, is_missing, message = out["algorithm"]
    assert (name, is_missing) == ("MissingPluginError", True)
    assert f"needs {needed}, which cannot be imported here" in message and f"pip install {needed}" in message
    assert out["served"] in (0, 1)  # serving needs neither


def _amber(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "amber.cli", *args], capture_output=True, text=True,
                          timeout=300, env=_without(tmp_path, "torch"), cwd=tmp_path)


@pytest.mark.parametrize("command", ["train", "evaluate", "export"])
def test_the_cli_without_torch_says_so_in_one_line(checkpoints, tmp_path, command):
    """`amber train` exited 1 with a traceback; evaluate and export blamed the checkpoint."""
    algo_path, _ = checkpoints
    args = {"train": ["train", "--algo", "PPO", "--env", "CartPole-v1", "--stop-iters", "1"],
            "evaluate": ["evaluate", str(algo_path)],
            "export": ["export", str(algo_path), str(tmp_path / "export"), "--onnx", "17"]}[command]
    proc = _amber(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amber: error: "), proc.stderr[-3000:]
    assert "needs torch, which cannot be imported here" in lines[0] and "pip install torch" in lines[0]


def test_serving_md_installs_every_dependency_but_torch_and_gymnasium():
    """docs/serving.md's commands for a serving host stay true to pyproject's dependencies."""
    tomllib = pytest.importorskip("tomllib")
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = (ROOT / "docs" / "serving.md").read_text()
    block = re.search(r"^```sh\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/serving.md has no sh block"
    commands = block.group(1).replace("\\\n", " ")
    assert "pip install --no-deps amber-rl\n" in commands
    deps_line = next(line for line in commands.splitlines() if "pluggy" in line)
    listed = re.findall(r'"([^"]+)"', deps_line)
    assert sorted(listed) == sorted(r for r in required if not r.startswith(("torch", "gymnasium")))
    assert 'pip install "onnxruntime' in commands
