"""What a newcomer following the docs meets on the command line: a converted copy that retention
must not delete, env and missing-dependency errors as one line, URLs where a local path is
expected, ``--resume`` keeping ``--format``, ``"module:EnvId"`` runs resumed and evaluated, the
real message of a missing mapping function, ``convert --framework`` without torch, and the
commands that errors suggest (paths quoted).

Every run is tiny (64 env steps an iteration, an 8-unit network), so each takes seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from amber.checkpoint import read_checkpoint
from amber.checkpoint_manager import MANAGED_KEY, CheckpointManager
from amber.cli import cli

TINY = ["-o", "train_batch_size=64", "-o", "minibatch_size=32", "-o", "num_epochs=1",
        "-o", "model.fcnet_hiddens=[8]"]
TRAIN = ["train", "--algo", "PPO", "--seed", "0", *TINY]


def _invoke(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def _amber(*args: str, cwd: Path, prelude: str = "", env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    """``amber ARGS`` in a new process (``prelude``: Python run first, e.g. hiding torch)."""
    code = f"import sys\n{prelude}\nfrom amber.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, **(env or {})})


def _format_of(ckpt: Path) -> str:
    return str(json.loads((ckpt / "checkpoint.json").read_text())["format"])


# -- 1. a converted copy is never deleted by the run's retention -----------------------------------------

def test_a_converted_copy_in_the_run_directory_survives_the_runs_retention(tmp_path):
    run = tmp_path / "run"
    first = _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--num-to-keep", "1",
                    "--checkpoint-dir", str(run))
    assert first.exit_code == 0, first.output
    copy = run / "checkpoint_000001-msgpack"  # what the serving error used to suggest
    converted = _invoke("convert", str(run / "checkpoint_000001"), str(copy), "--format", "msgpack")
    assert converted.exit_code == 0, converted.output
    renamed = run / "checkpoint_000007"  # a copy under another iteration's name is no managed one either
    shutil.copytree(run / "checkpoint_000001", renamed)
    assert [c.path.name for c in CheckpointManager(run).checkpoints()] == ["checkpoint_000001"]
    resumed = _invoke("train", "--resume", str(run), "--stop-iters", "2")
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in run.glob("checkpoint_*")) == [
        "checkpoint_000001-msgpack", "checkpoint_000002", "checkpoint_000007"]


def test_convert_writes_a_copy_elsewhere_unmanaged_and_in_place_keeps_the_marker(tmp_path):
    run = tmp_path / "run"
    assert _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--format", "msgpack",
                   "--checkpoint-dir", str(run)).exit_code == 0
    ckpt = run / "checkpoint_000001"
    copy = tmp_path / "copy"
    result = _invoke("convert", str(ckpt), str(copy), "--framework", "torch")
    assert result.exit_code == 0, result.output
    assert MANAGED_KEY not in read_checkpoint(copy, allow_pickle=False).metadata
    result = _invoke("convert", str(ckpt), str(ckpt), "--framework", "torch")
    assert result.exit_code == 0, result.output
    assert read_checkpoint(ckpt, allow_pickle=False).metadata[MANAGED_KEY] == "1"


def test_the_serving_hint_converts_a_runs_checkpoint_outside_the_run_and_quotes_paths(tmp_path):
    from amber.serve import PickleCheckpointError, load_policy

    run = tmp_path / "my run"
    assert _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", str(run)).exit_code == 0
    with pytest.raises(PickleCheckpointError) as info:
        load_policy(run / "checkpoint_000001")
    src, dst = shlex.quote(str(run / "checkpoint_000001")), shlex.quote(str(tmp_path / "my run-checkpoint_000001-msgpack"))
    assert f"`amber convert {src} {dst} --format msgpack`" in str(info.value)


# -- 2. env and missing-dependency errors: one line, exit 2 -------------------------------------------------

@pytest.mark.parametrize(("env_args", "said"), [
    (["--env", "nomod_newcomer:Foo-v0"], "ModuleNotFoundError"),
    (["--env", "gymnasium:Foo-v0"], "NameNotFound"),
    (["--env", "FrozenLake-v1", "--env-kwargs", '{"map_name": "16x16"}'], "KeyError: '16x16'"),
])
def test_an_env_that_cannot_be_built_is_one_error_line(tmp_path, env_args, said):
    result = _invoke(*TRAIN, *env_args, "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("amber: error: cannot build PPO on ") and said in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tf2_without_the_keras_extra_is_one_error_line(tmp_path, monkeypatch):
    for module in ("tensorflow", "keras"):
        monkeypatch.setitem(sys.modules, module, None)
    result = _invoke(*TRAIN, "--env", "CartPole-v1", "-o", "framework=tf2", "--stop-iters", "1",
                     "--checkpoint-dir", str(tmp_path / "run"))
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "amber-rl[keras]" in result.stderr and "Traceback" not in result.stderr


def test_a_bug_in_amber_while_building_keeps_its_traceback(tmp_path, monkeypatch):
    from amber.algorithms.algorithm_config import AlgorithmConfig

    def broken(self, *args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(AlgorithmConfig, "build", broken)
    result = _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", str(tmp_path / "r"))
    assert isinstance(result.exception, KeyError)


# -- 3. a URL where a local path is expected -------------------------------------------------------------

def test_a_url_as_checkpoint_dir_or_plot_output_is_refused_never_a_local_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("s3://bucket/run", "gs://bucket/run"):
        result = _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", url)
        assert result.exit_code == 2, result.output
        assert f"--storage {url[:-4]} --checkpoint-dir run" in result.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "progress.csv").write_text("training_iteration,num_env_steps_sampled_lifetime\n")
    result = _invoke("plot", "run", "-o", "s3://bucket/plot.png")
    assert result.exit_code == 2 and "is a URL" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


# -- 4. --resume --format is recorded ----------------------------------------------------------------------

def test_resume_records_a_new_format_as_it_records_num_to_keep(tmp_path):
    run = tmp_path / "run"
    assert _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", str(run)).exit_code == 0
    assert _invoke("train", "--resume", str(run), "--stop-iters", "2", "--format", "msgpack").exit_code == 0
    assert _invoke("train", "--resume", str(run), "--stop-iters", "3").exit_code == 0
    assert [_format_of(run / f"checkpoint_00000{i}") for i in (1, 2, 3)] == ["pickle", "msgpack", "msgpack"]
    config = read_checkpoint(run / "checkpoint_000003", allow_pickle=False).state["config"]
    assert config["checkpoint_format"] == "msgpack"


# -- 5. a "module:EnvId" run, resumed and evaluated ---------------------------------------------------------

def test_a_module_env_run_is_resumed_and_evaluated_with_its_env_given_again(tmp_path):
    (tmp_path / "newcomer_envs.py").write_text(
        "import gymnasium\ngymnasium.register('NcMaze-v0', "
        "entry_point='gymnasium.envs.classic_control:CartPoleEnv', max_episode_steps=50)\n")
    env, env_id = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, "newcomer_envs:NcMaze-v0"
    run = tmp_path / "my run"
    proc = _amber(*TRAIN, "--env", env_id, "--stop-iters", "1", "--checkpoint-dir", str(run), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _amber("train", "--resume", str(run), "--stop-iters", "2", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"amber train --resume {shlex.quote(str(run))} ... --env {env_id}" in proc.stderr
    proc = _amber("train", "--resume", str(run), "--stop-iters", "2", "--env", "CartPole-v1", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and f"saved {env_id!r}" in proc.stderr, proc.stderr
    proc = _amber("train", "--resume", str(run), "--stop-iters", "2", "--env", env_id, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _amber("evaluate", str(run / "checkpoint_000002"), "--episodes", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "--env newcomer_envs:NcMaze-v0" in proc.stderr, proc.stderr
    proc = _amber("evaluate", str(run / "checkpoint_000002"), "--episodes", "1", "--env", env_id,
                  cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "return mean" in proc.stdout, proc.stderr


# -- 6. evaluate keeps the name of a mapping function saved by name ------------------------------------------

def test_evaluate_names_the_registered_mapping_fn_this_process_lacks(tmp_path):
    import amber
    from amber.algorithms.ppo import PPOConfig
    from amber.envs import MultiAgentCartPole

    def mapping(agent, *a, **kw):
        return f"p{agent}"

    amber.register_class(mapping, name="newcomer.mapping")
    algo = (PPOConfig().environment(MultiAgentCartPole, env_config={"num_agents": 2})
            .multi_agent(policies={"p0", "p1"}, policy_mapping_fn=mapping)
            .training(train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]}).build())
    algo.save(tmp_path / "ma_ck", format="msgpack")
    algo.stop()
    proc = _amber("evaluate", str(tmp_path / "ma_ck"), "--episodes", "1", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "'newcomer.mapping'" in proc.stderr and "amber.register_class" in proc.stderr
    assert "saved without" not in proc.stderr and "--policy ID" in proc.stderr


# -- 7. convert --framework on a host without torch -----------------------------------------------------------

def test_convert_framework_without_torch_says_what_to_install(tmp_path):
    from amber.algorithms.ppo import PPOConfig

    algo = PPOConfig().environment("CartPole-v1").training(
        train_batch_size=64, minibatch_size=32, num_epochs=1, model={"fcnet_hiddens": [8]}).build()
    algo.save(tmp_path / "ck", format="msgpack")
    algo.stop()
    proc = _amber("convert", "ck", "ck_tf2", "--framework", "tf2", cwd=tmp_path,
                  prelude="sys.modules['torch'] = None")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("amber: error: ") and "needs torch" in proc.stderr
    assert not (tmp_path / "ck_tf2").exists()


# -- 8. suggested commands quote their paths; small help fixes --------------------------------------------------

def test_a_suggested_resume_quotes_its_path(tmp_path):
    run = tmp_path / "my run"
    args = [*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", str(run)]
    assert _invoke(*args).exit_code == 0
    result = _invoke(*args)
    assert result.exit_code == 2 and f"`amber train --resume {shlex.quote(str(run))} ...`" in result.stderr


def test_the_suggested_amber_trust_quotes_its_path(tmp_path, monkeypatch):
    import numpy as np

    from amber.checkpoint import write_checkpoint
    from amber.errors import UnsafeContentError

    theirs = tmp_path / "their ck"
    with monkeypatch.context() as other_user:
        other_user.setenv("AMBER_KEY_FILE", str(tmp_path / "other" / "signing.key"))
        write_checkpoint(theirs, type="Algorithm", state={"iteration": 3}, policies={"p": {"w": np.arange(4.0)}},
                         format="pickle")
    with pytest.raises(UnsafeContentError) as info:
        read_checkpoint(theirs)
    assert f"`amber trust {shlex.quote(str(theirs))}`" in str(info.value)


def test_evaluate_help_describes_episodes():
    result = _invoke("evaluate", "--help")
    assert result.exit_code == 0 and "How many episodes" in result.output


def test_convert_to_another_format_elsewhere_is_not_managed_by_the_run(tmp_path):
    run = tmp_path / "run"
    assert _invoke(*TRAIN, "--env", "CartPole-v1", "--stop-iters", "1", "--checkpoint-dir", str(run)).exit_code == 0
    ckpt = run / "checkpoint_000001"
    copy = tmp_path / "copy"
    result = _invoke("convert", str(ckpt), str(copy), "--format", "msgpack")
    assert result.exit_code == 0, result.output
    assert MANAGED_KEY not in read_checkpoint(copy, allow_pickle=False).metadata
    result = _invoke("convert", str(ckpt), str(ckpt), "--format", "msgpack")  # in place: still the run's
    assert result.exit_code == 0, result.output
    assert read_checkpoint(ckpt, allow_pickle=False).metadata[MANAGED_KEY] == "1"
