"""Faults an exploratory tester found in the ``amber`` command: a refused ``amber train`` that wrote
a lock file (into a checkpoint too), settings taken with the wrong type, a checkpoint replaced while
it was read taken for a damaged one, empty plots, writes into a checkpoint through a symlinked
parent or by ``amber plot``, a config file's name missing from its error, Ctrl-C's exit status,
``amber trust`` of a policy its algorithm already vouches for, and YAML's ``1e-3``.

Nothing here trains: every refusal comes before the algorithm would run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber.verified_io as verified_io
from amber.algorithms.config_overrides import configure, merge_settings, read_settings_file
from amber.checkpoint import read_checkpoint, write_checkpoint
from amber.cli import cli
from amber.errors import ChangedWhileReadError, CorruptCheckpointError
from amber.layout import MANIFEST, enclosing_checkpoint, read_manifest
from amber.names import resolve
from amber.utils.checkpoints import verify

TINY = ["-o", "train_batch_size=64", "-o", "minibatch_size=32", "-o", "num_epochs=1"]


def _run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args))


def _checkpoint(path: Path, fill: float = 1.0, format: str = "msgpack") -> Path:
    return write_checkpoint(path, type="Algorithm", state={"iteration": 1, "x": np.full(1000, fill)},
                            policies={f"p{i}": {"w": np.full(500, fill + i)} for i in range(2)},
                            format=format)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# -- 1. a refused amber train writes nothing -------------------------------------------------------------

def test_a_refused_train_writes_nothing(tmp_path, monkeypatch):
    """A refused --resume of a checkpoint wrote .amber-train.lock into it (then `amber verify` failed
    on it, and retention never deleted it); a mistyped --resume, or --format, made the directory."""
    monkeypatch.chdir(tmp_path)
    ckpt = _checkpoint(tmp_path / "run" / "checkpoint_000001")
    before = _tree(ckpt)
    result = _run("train", "--resume", str(ckpt), "--stop-iters", "3")
    assert result.exit_code == 2 and "it is a checkpoint itself" in result.stderr, result.output
    assert _tree(ckpt) == before and verify(ckpt).ok
    result = _run("train", "--resume", "typo_run", "--stop-iters", "3")
    assert result.exit_code == 2 and not Path("typo_run").exists(), result.output
    result = _run("train", "--env", "CartPole-v1", "--stop-iters", "1", "--format", "nosuch",
                  "--checkpoint-dir", "newrun")
    assert result.exit_code == 2 and "unknown format 'nosuch'" in result.stderr, result.output
    assert not Path("newrun").exists()
    (tmp_path / "empty").mkdir()
    result = _run("train", "--resume", "empty", "--stop-iters", "3")
    assert result.exit_code == 2 and "holds no amber checkpoint" in result.stderr, result.output
    assert not any((tmp_path / "empty").iterdir())
    result = _run("train", "--resume", "run", "--stop-iters", "3", "--checkpoint-dir", str(ckpt / "logs"))
    assert result.exit_code == 2 and "a directory of its own" in result.stderr, result.output
    assert _tree(ckpt) == before and not (tmp_path / "run" / ".amber-train.lock").exists()


def test_the_run_lock_is_never_written_into_a_checkpoint(tmp_path):
    from amber.cli.base import AmberCliError
    from amber.cli.train_loop import run_lock

    ckpt = _checkpoint(tmp_path / "ck")
    for inside in (ckpt, ckpt / "policies" / "p0", ckpt / "new"):
        with pytest.raises(AmberCliError, match="nothing may be written into a checkpoint"), run_lock(inside):
            pass
    assert verify(ckpt).ok and not (ckpt / "new").exists()


# -- 2. every setting is type-checked ------------------------------------------------------------------------

@pytest.mark.parametrize("override", ["log_results=no", "store_replay_buffer=off", "multi_agent=yes",
                                      "export_native_model_files=no", "restart_failed_env_runners=0",
                                      "seed=1.5", "num_env_runners=true", "checkpoint_score_order=1"])
def test_a_setting_of_the_wrong_type_is_a_usage_error(tmp_path, override):
    """Any string was taken for True by a bool setting (-o log_results=False turned it on)."""
    result = _run("train", "--env", "CartPole-v1", "--stop-iters", "1", *TINY, "-o", override,
                  "--checkpoint-dir", str(tmp_path / "run"))
    key = override.partition("=")[0]
    assert result.exit_code == 2 and f"setting {key!r} must be" in result.stderr, result.output
    assert not (tmp_path / "run").exists()


def test_bools_take_json_and_python_spellings_as_real_bools():
    ppo, dqn = resolve("amber.PPOConfig"), resolve("amber.DQNConfig")
    config = configure(ppo, merge_settings({}, ["log_results=False", "export_native_model_files=true"]))
    assert config.log_results is False and config.export_native_model_files is True
    config = configure(dqn, merge_settings({"store_replay_buffer": "True"}, ["dueling=False"]))
    assert config.store_replay_buffer is True and config.dueling is False
    with pytest.raises(ValueError, match="'log_results' must be bool"):
        configure(ppo, {"log_results": "false"})  # JSON's spelling is the bool, not a string of it


def test_every_setting_has_a_type():
    from amber.algorithms.config_overrides import SETTING_TYPES

    for name in ("amber.PPOConfig", "amber.DQNConfig", "amber.SACConfig"):
        config_class = resolve(name)
        keys = set(config_class().to_dict()) - {"_config_class"}
        assert keys <= set(SETTING_TYPES) | set(config_class.hyperparameter_types()), name


# -- 3. a checkpoint replaced while it is read ------------------------------------------------------------

def test_a_checkpoint_replaced_during_amber_convert_is_read_again(tmp_path, monkeypatch):
    """A save over SRC while `amber convert` read it: the reader opened the new checkpoint's files
    by path against the old manifest ("content does not match its digest"), so convert failed."""
    src = _checkpoint(tmp_path / "src", fill=1.0)
    real, saves = verified_io.new_hasher, []

    def resave_once(*args: object) -> object:
        if not saves:
            saves.append(src)
            _checkpoint(src, fill=2.0)  # the atomic swap, halfway through the read
        return real(*args)

    monkeypatch.setattr(verified_io, "new_hasher", resave_once)
    result = _run("convert", str(src), str(tmp_path / "dst"), "--format", "pickle")
    assert result.exit_code == 0, result.output
    assert saves and verify(tmp_path / "dst").ok
    assert read_checkpoint(tmp_path / "dst").policies["p1"].state["w"][0] == 3.0  # the new one, whole


def test_a_file_replaced_under_the_reader_is_no_corruption(tmp_path):
    src = _checkpoint(tmp_path / "ck", fill=1.0)
    old = read_manifest(src)
    _checkpoint(src, fill=2.0)
    with pytest.raises(ChangedWhileReadError, match="changed while it was read"):
        verified_io.read_verified(src, "policies/p0/checkpoint.json", old.files["policies/p0/checkpoint.json"])
    rel = next(r for r in old.files if not r.startswith("policies/"))
    with pytest.raises(ChangedWhileReadError):
        verified_io.check_file(src, rel, old.files[rel])
    now, pol = read_manifest(src), read_manifest(src / "policies" / "p0")
    deep = next(f"policies/p0/{r}" for r in pol.files)
    for damaged in (rel, deep):  # real damage, the manifests unchanged: still corrupt
        data = bytearray((src / damaged).read_bytes())
        data[-1] ^= 1
        (src / damaged).write_bytes(bytes(data))
    assert "does not match its digest" in verified_io.check_file(src, rel, now.files[rel])
    with pytest.raises(CorruptCheckpointError):
        verified_io.read_verified(src, rel, now.files[rel])
    assert "does not match its digest" in verified_io.check_file(src, deep, pol.files[deep[12:]])


def test_a_pinned_read_sees_one_checkpoint(tmp_path, monkeypatch):
    src = _checkpoint(tmp_path / "ck", fill=1.0)
    with verified_io.pinned(src):
        monkeypatch.setattr("amber.atomic.shutil.rmtree", lambda *a, **k: None)  # the old one kept
        _checkpoint(src, fill=2.0)
        monkeypatch.undo()
        assert read_checkpoint(src).policies["p0"].state["w"][0] == 1.0  # the old one, whole
    assert read_checkpoint(src).policies["p0"].state["w"][0] == 2.0
    with verified_io.pinned(src):
        _checkpoint(src, fill=3.0)  # the old one removed at once
        with pytest.raises(ChangedWhileReadError):
            read_checkpoint(src)
    os.rename(src / "policies" / "p1", tmp_path / "p1")
    (src / "policies" / "p1").symlink_to(src / "policies" / "p0")  # the pin follows no link below it
    with verified_io.pinned(src), pytest.raises(CorruptCheckpointError, match="symbolic link"):
        verified_io.open_nofollow(src / "policies" / "p1", MANIFEST)


# -- 4 and 9. amber plot --------------------------------------------------------------------------------------

def _progress(run: Path, rows: str) -> Path:
    run.mkdir(parents=True)
    (run / "progress.csv").write_text("training_iteration,num_env_steps_sampled_lifetime,episode_return_mean,"
                                      "checkpoint\n" + rows)
    return run


def test_plot_marks_a_single_point_and_refuses_an_empty_curve(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    drawn = []
    savefig = Figure.savefig

    def spy(fig: Figure, *args: object, **kwargs: object) -> None:
        drawn.extend(line for ax in fig.axes for line in ax.lines)
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    one = _progress(tmp_path / "one", "1,1000,23.8,one/checkpoint_000001\n")
    result = _run("plot", str(one), "-o", str(tmp_path / "one.png"))
    assert result.exit_code == 0, result.output
    assert [line.get_marker() not in (None, "None", "", " ") for line in drawn] == [True]
    empty = _progress(tmp_path / "empty", "")
    for args, why in ((["empty"], "no row yet"), (["one", "--metric", "checkpoint"], "has a number in both")):
        out = tmp_path / f"{args[0]}-{len(args)}.png"
        result = _run("plot", str(tmp_path / args[0]), *args[1:], "-o", str(out))
        assert result.exit_code == 2 and f"nothing to draw for {tmp_path / args[0]}" in result.stderr, result.output
        assert why in result.stderr and not out.exists()
    assert empty.exists()


def test_plot_never_writes_into_a_checkpoint(tmp_path):
    pytest.importorskip("matplotlib")
    ckpt = _checkpoint(tmp_path / "ck")
    run = _progress(tmp_path / "run", "1,64,10,\n2,128,12,\n")
    for out in (ckpt / "curves.png", ckpt / "policies" / "p0" / "curves.png"):
        result = _run("plot", str(run), "-o", str(out))
        assert result.exit_code == 2 and "refusing to write" in result.stderr, result.output
    assert verify(ckpt).ok


# -- 5. a destination inside a checkpoint through a symlinked parent --------------------------------------

def test_a_destination_inside_a_checkpoint_through_a_link_is_refused(tmp_path):
    ckpt = _checkpoint(tmp_path / "ck")
    other = _checkpoint(tmp_path / "other", fill=5.0)
    (tmp_path / "alias").symlink_to(ckpt / "policies")
    assert enclosing_checkpoint(tmp_path / "alias" / "new") == ckpt.resolve()
    assert enclosing_checkpoint(ckpt / "policies" / "new") == ckpt  # spelled as given where it can be
    for verb in (["convert", str(other), str(tmp_path / "alias" / "new"), "--format", "pickle"],
                 ["migrate", str(other), str(tmp_path / "alias" / "new")]):
        result = _run(*verb)
        assert result.exit_code == 2 and "inside the checkpoint" in result.stderr, result.output
    assert verify(ckpt).ok and not (ckpt / "policies" / "new").exists()


# -- 6 and 10. settings files ---------------------------------------------------------------------------------

def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    for name, data in (("settings.json", b"\xff\xfe{}"), ("latin1.yaml", b"lr: 0.001 # caf\xe9\n")):
        (tmp_path / name).write_bytes(data)
        result = _run("train", "--env", "CartPole-v1", "--stop-iters", "1", "--config", str(tmp_path / name),
                      "--checkpoint-dir", str(tmp_path / "run"))
        assert result.exit_code == 2 and f"{tmp_path / name} is not UTF-8 text" in result.output, result.output


def test_yaml_reads_an_exponent_as_a_float(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "ppo.yaml").write_text("lr: 1e-3\ngamma: 9.9E-1\nenv: CartPole-v1\nenv_config: {tag: 1e3x}\n")
    settings = read_settings_file(tmp_path / "ppo.yaml")
    assert settings == {"lr": 0.001, "gamma": 0.99, "env": "CartPole-v1", "env_config": {"tag": "1e3x"}}
    config = configure(resolve("amber.PPOConfig"), settings)
    assert config.lr == 0.001


# -- 7. Ctrl-C ---------------------------------------------------------------------------------------------------

def test_ctrl_c_exits_130_in_every_command(tmp_path, monkeypatch):
    """Ctrl-C during amber convert exited 1 with "Aborted!", the status of "problems found"."""
    src = _checkpoint(tmp_path / "src")

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("amber.utils.checkpoints.convert_checkpoint", interrupted)
    result = _run("convert", str(src), str(tmp_path / "dst"), "--format", "pickle")
    assert result.exit_code == 130 and "amber: interrupted" in result.stderr, result.output
    monkeypatch.setattr("amber.utils.checkpoints.verify", interrupted)
    assert _run("verify", str(src)).exit_code == 130


# -- 8. amber trust of a policy its algorithm vouches for ----------------------------------------------------

@pytest.mark.parametrize("format", ["pickle", "msgpack"])
def test_trusting_a_policy_of_a_trusted_algorithm_changes_nothing(tmp_path, format):
    ckpt = _checkpoint(tmp_path / "ck", format=format)
    before = (ckpt / MANIFEST).read_bytes()
    result = _run("trust", "--yes", str(ckpt / "policies" / "p0"))
    assert result.exit_code == 0, result.output
    assert f"nothing changed: {ckpt / 'policies' / 'p0'} is trusted through its algorithm {ckpt}" in result.output
    assert (ckpt / MANIFEST).read_bytes() == before and sorted(os.listdir(ckpt / "policies")) == ["p0", "p1"]
