"""The ``amber`` command, through click's runner and as the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import amber
from amber.checkpoint import CHECKPOINT_VERSION, read_checkpoint, write_checkpoint
from amber.cli import CliState, cli, human_size
from amber.registry import Migration, get_registry
from amber.utils.checkpoints import get_checkpoint_info
from tests.treeutil import write_raw_manifest


def invoke(pm, *args: str, env: dict[str, str] | None = None):
    """Run ``amber ARGS`` in-process with the test's own plugin manager."""
    return CliRunner().invoke(cli, list(args), obj=CliState(plugin_manager=pm), env=env)


def one_error_line(result) -> str:
    """The single ``amber: error:`` line a failed command printed on stderr."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("amber: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def amber_command() -> list[str]:
    """The installed console script, or the module when it is not on disk."""
    script = Path(sys.executable).with_name("amber")
    return [str(script)] if script.exists() else [sys.executable, "-m", "amber.cli"]


def make_checkpoint(path: Path, pm, *, format: str = "pickle") -> Path:
    return write_checkpoint(
        path,
        type="Algorithm",
        state={"step": 7, "w": np.arange(4.0), "name": "ppo"},
        policies={"p1": {"weights": np.ones((2, 3), dtype=np.float32), "lr": 0.001}},
        format=format,
        metadata={"run": "test"},
        pm=pm,
    )


@pytest.fixture
def ckpt(tmp_path, pm) -> Path:
    return make_checkpoint(tmp_path / "ckpt", pm)


class OpenOnUnpickle:
    """Unpickling this creates the file ``marker``: proof that something unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def assert_same(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key])
            assert a[key].dtype == b[key].dtype
        else:
            assert a[key] == b[key]


# --------------------------------------------------------------------------
# formats, plugins, --version
# --------------------------------------------------------------------------


def test_version(pm):
    result = invoke(pm, "--version")
    assert result.exit_code == 0
    assert amber.__version__ in result.stdout


def test_formats_lists_pickle_with_capabilities(pm):
    result = invoke(pm, "formats")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if " pickle " in line)
    cells = [c.strip() for c in row.strip("│ \n").split("│")]
    assert cells[:6] == ["pickle", ".pkl", "no", "no", "yes", "pickle_fmt"]
    for name in get_registry(pm).names():
        assert name in result.stdout


def test_plugins_lists_in_tree_plugins_and_hooks(pm):
    result = invoke(pm, "plugins")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "pickle_fmt" in line)
    assert "amber.plugins.pickle_fmt" in row
    assert "amber_register_formats" in row
    assert "built in" in row


def test_trace_hooks_prints_hook_calls():
    result = CliRunner().invoke(cli, ["--trace-hooks", "formats"])
    assert result.exit_code == 0, result.output
    assert "amber_register_formats" in result.stderr


class _Warns:
    """A plugin whose format registration warns with text a hostile checkpoint could hold."""

    @amber.hookimpl
    def amber_register_formats(self):
        warnings.warn("odd name \x1b[2J\u202egnp.exe", UserWarning, stacklevel=1)
        warnings.warn("old setting", DeprecationWarning, stacklevel=1)
        return []


def test_warnings_are_one_escaped_line_on_stderr(pm):
    pm.register(_Warns(), name="warns")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # (DeprecationWarning is shown only when asked)
        result = invoke(pm, "formats")
    assert result.exit_code == 0, result.output
    assert "amber: warning: odd name \\x1b[2J\\u202egnp.exe\n" in result.stderr
    assert "amber: warning: old setting (DeprecationWarning)" in result.stderr
    assert "\x1b" not in result.stderr and ".py:" not in result.stderr  # no raw escape, no source line


# --------------------------------------------------------------------------
# inspect
# --------------------------------------------------------------------------


def test_inspect_shows_tree(pm, ckpt):
    result = invoke(pm, "inspect", str(ckpt))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("Algorithm checkpoint", f"checkpoint_version: {CHECKPOINT_VERSION}", "format: pickle",
                 f"amber {amber.__version__}", "policies: p1", "run: test"):
        assert text in out
    info = get_checkpoint_info(ckpt)
    size = info["files"]["algorithm_state.pkl"]["size"]
    assert f"algorithm_state.pkl  {human_size(size)}" in out
    # algorithm files first, then policies/p1/ with its files
    assert out.index("algorithm_state.pkl") < out.index("policies/") < out.index("p1/")
    assert out.index("p1/") < out.index("policy_state.pkl")


def test_inspect_json_equals_checkpoint_info(pm, ckpt):
    result = invoke(pm, "inspect", "--json", str(ckpt))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == get_checkpoint_info(ckpt)


def test_human_size():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"


def test_inspect_and_verify_never_unpickle(tmp_path, pm):
    marker = tmp_path / "unpickled"
    path = write_checkpoint(
        tmp_path / "evil", type="Algorithm", state={"x": OpenOnUnpickle(marker)},
        policies={"p1": {"y": OpenOnUnpickle(marker)}}, format="pickle", pm=pm,
    )
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)], ["verify", str(path)]):
        result = invoke(pm, *args)
        assert result.exit_code == 0, result.output
        assert not marker.exists(), args
    # the trap is real: reading the checkpoint does unpickle it
    read_checkpoint(path, allow_pickle=True, pm=pm)
    assert marker.exists()


# --------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------


def test_verify_ok(pm, ckpt):
    result = invoke(pm, "verify", str(ckpt))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ")
    assert result.stdout.strip().endswith("files verified")
    assert len(result.stdout.splitlines()) == 1


def test_verify_flipped_byte_names_the_file(pm, ckpt):
    bad = ckpt / "policies" / "p1" / "policy_state.pkl"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    result = invoke(pm, "verify", str(ckpt))
    assert result.exit_code == 1, result.output
    assert str(bad) in result.stdout
    assert "Traceback" not in result.output


def test_verify_missing_file_names_it(pm, ckpt):
    gone = ckpt / "algorithm_state.pkl"
    gone.unlink()
    result = invoke(pm, "verify", str(ckpt))
    assert result.exit_code == 1, result.output
    assert str(gone) in result.stdout
    assert "missing" in result.stdout


def test_verify_malformed_top_manifest_is_exit_1(pm, ckpt):
    (ckpt / "checkpoint.json").write_text("{not json")
    result = invoke(pm, "verify", str(ckpt))
    assert result.exit_code == 1, result.output
    assert "checkpoint.json" in result.stdout


def test_verify_not_a_checkpoint_is_exit_2(pm, tmp_path):
    result = invoke(pm, "verify", str(tmp_path))
    assert result.exit_code == 2
    assert str(tmp_path) in one_error_line(result)


# --------------------------------------------------------------------------
# convert and migrate
# --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["pickle", "msgpack"])
def test_convert_round_trip(pm, ckpt, tmp_path, target):
    if target not in get_registry(pm).names():
        pytest.skip(f"format {target!r} is not registered yet")
    dst = tmp_path / f"as-{target}"
    result = invoke(pm, "convert", str(ckpt), str(dst), "--format", target)
    assert result.exit_code == 0, result.output
    assert str(dst) in result.stdout
    before = read_checkpoint(ckpt, allow_pickle=True, pm=pm)
    after = read_checkpoint(dst, allow_pickle=True, pm=pm)
    assert after.format == target
    assert_same(before.state, after.state)
    assert before.policies.keys() == after.policies.keys()
    assert_same(before.policies["p1"].state, after.policies["p1"].state)
    assert after.metadata == before.metadata
    assert invoke(pm, "verify", str(dst)).exit_code == 0


@pytest.mark.parametrize("args", [["convert", "{ckpt}", "{ckpt}/converted", "--format", "msgpack"],
                                  ["migrate", "{ckpt}", "{ckpt}/migrated"],
                                  ["convert", "{ckpt}/policies/p1", "{ckpt}/policies/p1-copy", "--format", "msgpack"]],
                         ids=["convert", "migrate", "policy-beside-itself"])
def test_a_destination_inside_a_checkpoint_is_refused(pm, ckpt, args):
    """The checkpoint's manifest would not list it: `amber verify` would then fail on that checkpoint."""
    before = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))
    result = invoke(pm, *[a.format(ckpt=ckpt) for a in args], "--trust")
    assert result.exit_code == 2
    assert f"inside the checkpoint {ckpt}, whose checkpoint.json would not list it" in one_error_line(result)
    assert sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")) == before
    assert invoke(pm, "verify", str(ckpt)).exit_code == 0


def test_a_checkpoint_converted_in_place_is_still_allowed(pm, ckpt):
    result = invoke(pm, "convert", str(ckpt), str(ckpt), "--format", "msgpack", "--trust")
    assert result.exit_code == 0, result.output
    assert get_checkpoint_info(ckpt)["format"] == "msgpack" and invoke(pm, "verify", str(ckpt)).exit_code == 0


def test_migrate_recursive_of_a_missing_root_or_an_empty_path_is_an_error(pm, tmp_path, monkeypatch):
    """Not "no checkpoint under ..." with exit 0; and "" ("$UNSET" in a script) is not the current
    directory, which `migrate --recursive` would migrate in place."""
    result = invoke(pm, "migrate", "--recursive", str(tmp_path / "no" / "such"))
    assert result.exit_code == 2 and "is not a directory (does not exist)" in one_error_line(result)
    monkeypatch.chdir(tmp_path)
    for args in (["migrate", "--recursive", ""], ["inspect", ""], ["verify", ""]):
        result = invoke(pm, *args)
        assert result.exit_code == 2 and "an empty path" in result.output, args


def test_convert_framework_of_a_state_checkpoint_is_one_error_line(pm, tmp_path):
    state = amber.save({"x": np.arange(3)}, tmp_path / "state", format="msgpack", pm=pm)
    result = invoke(pm, "convert", str(state), str(tmp_path / "out"), "--framework", "tf2")
    assert result.exit_code == 2
    assert "holds a State checkpoint: only algorithm and policy" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_convert_safe_refuses_pickle(pm, ckpt, tmp_path):
    result = invoke(pm, "convert", str(ckpt), str(tmp_path / "out"), "--format", "pickle", "--safe")
    assert result.exit_code == 2
    assert "pickle" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_convert_unknown_format(pm, ckpt, tmp_path):
    result = invoke(pm, "convert", str(ckpt), str(tmp_path / "out"), "--format", "nope")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "nope" in line
    for name in get_registry(pm).names():
        assert name in line
    assert not (tmp_path / "out").exists()


def test_convert_large_source_shows_progress(pm, ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("amber.cli.convert.PROGRESS_MIN_BYTES", 0)
    result = invoke(pm, "convert", str(ckpt), str(tmp_path / "out"), "--format", "pickle",
                    env={"FORCE_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "converting" in result.stderr
    assert str(tmp_path / "out") in result.stdout


def test_migrate_current_checkpoint(pm, ckpt, tmp_path):
    result = invoke(pm, "migrate", str(ckpt))
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.stdout
    dst = tmp_path / "copy"
    result = invoke(pm, "migrate", str(ckpt), str(dst))
    assert result.exit_code == 0, result.output
    assert str(dst) in result.stdout
    assert get_checkpoint_info(dst)["checkpoint_version"] == CHECKPOINT_VERSION


class OldVersionMigrations:
    """A third-party-style plugin with one migration step, 0.9 -> 1.0 (then amber's own to current)."""

    @amber.hookimpl
    def amber_register_migrations(self):
        def apply(trees):
            return trees.replace(state={"renamed": trees.state["old_name"]})

        return [Migration("0.9", "1.0", apply, description="old_name is called renamed")]


def test_migrate_old_checkpoint_in_place(pm, tmp_path):
    pm.register(OldVersionMigrations(), name="test_migrations")
    path = write_checkpoint(tmp_path / "old", type="State", state={"old_name": 3},
                            format="pickle", pm=pm)
    manifest = json.loads((path / "checkpoint.json").read_text())
    manifest["checkpoint_version"] = "0.9"
    write_raw_manifest(path / "checkpoint.json", manifest)  # by hand: its signature no longer matches
    result = invoke(pm, "migrate", str(path), "--trust")
    assert result.exit_code == 0, result.output
    assert "0.9 -> 1.0" in result.stdout and "old_name is called renamed" in result.stdout
    ckpt = read_checkpoint(path, allow_pickle=True, migrate=False, pm=pm)
    assert ckpt.checkpoint_version == CHECKPOINT_VERSION
    assert ckpt.state == {"renamed": 3}


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "verify", "migrate"])
def test_nonexistent_path(pm, tmp_path, command):
    missing = tmp_path / "missing"
    result = invoke(pm, command, str(missing))
    assert result.exit_code == 2
    assert str(missing) in one_error_line(result)


def test_usage_errors_stay_click_errors(pm):
    result = invoke(pm, "convert", "a")
    assert result.exit_code == 2
    assert "Usage:" in result.stderr


# --------------------------------------------------------------------------
# the installed console script
# --------------------------------------------------------------------------


def run_amber(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AMBER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([*amber_command(), *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_console_script(pm, ckpt, tmp_path):
    done = run_amber("inspect", "--json", str(ckpt))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == get_checkpoint_info(ckpt)

    done = run_amber("verify", str(ckpt))
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stderr

    done = run_amber("convert", str(ckpt), str(tmp_path / "out"), "--format", "nope")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("amber: error: unknown format")
    assert "Traceback" not in done.stderr

    done = run_amber("inspect", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("amber: error: ")


def test_cli_import_does_not_import_torch():
    code = "import sys, amber.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------
# the package's layout: base holds the group, command modules import only base
# --------------------------------------------------------------------------

CLI_PACKAGE = Path(amber.__file__).parent / "cli"
CLI_MODULES = ["amber.cli", *sorted(f"amber.cli.{p.stem}" for p in CLI_PACKAGE.glob("*.py")
                                    if p.stem != "__init__")]
CLI_ORDERS = [CLI_MODULES[i:] + CLI_MODULES[:i] for i in range(len(CLI_MODULES))]
CLI_ORDERS += [list(reversed(order)) for order in CLI_ORDERS]


@pytest.mark.parametrize("order", CLI_ORDERS, ids=lambda order: "-".join(m.rsplit(".", 1)[-1] for m in order))
def test_cli_modules_import_in_any_order(order):
    """Each module of amber.cli imported first (then the others) in a fresh interpreter: no cycle."""
    code = (
        "import importlib, sys\n"
        f"for name in {order!r}:\n"
        "    importlib.import_module(name)\n"
        "from amber.cli import cli\n"
        "assert set(cli.commands) >= {'formats', 'plugins', 'inspect', 'verify', 'convert', 'migrate',"
        " 'export', 'train', 'evaluate'}, sorted(cli.commands)\n"
        "heavy = [m for m in ('torch', 'numpy', 'rich') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "ImportError" not in done.stderr


def _amber_cli_imports(path: Path) -> set[str]:
    """The ``amber.cli`` modules that the file at ``path`` imports."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"amber.cli.{node.module}"
            names.update(f"{base}.{alias.name}" for alias in node.names if base == "amber.cli")
            names.add(base)
    return {n for n in names if n == "amber.cli" or n.startswith("amber.cli.")}


def test_cli_command_modules_import_only_base():
    """base imports no module of the package; a command module imports only base and helper
    modules (which register no command and import only base); none imports the package itself
    (only ``__main__``, which the package never imports, does)."""
    helpers = {f"amber.cli.{p.stem}" for p in CLI_PACKAGE.glob("*.py")
               if p.stem not in ("__init__", "__main__", "base") and "@cli.command" not in p.read_text()}
    assert "amber.cli.train_loop" in helpers
    for path in CLI_PACKAGE.glob("*.py"):
        imported = _amber_cli_imports(path)
        if path.stem == "base":
            assert imported == set(), imported
        elif path.stem == "__main__":
            assert imported <= {"amber.cli", "amber.cli.main"}, imported
        elif f"amber.cli.{path.stem}" in helpers:
            assert imported == {"amber.cli.base"}, (path.name, imported)
        elif path.stem != "__init__":
            assert imported - helpers == {"amber.cli.base"}, (path.name, imported)
