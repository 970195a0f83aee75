"""A pickle checkpoint naming code the installed version lacks is an incompatibility, not damage.

Pickle stores a class or function of an importable module as the module and
its name. Loaded where the module no longer defines that name (a class
renamed or removed since the save), or where the module cannot be imported,
the file is intact: it was written by other code. The error says so
(:class:`amber.errors.IncompatibleCodeError`, an ``UnregisteredNameError``),
naming the file, the module, the name and the amber and Python that wrote it.
"""

from __future__ import annotations

import pickle
import platform
import sys
from pathlib import Path

import pytest

import amber
from amber.errors import CorruptCheckpointError, IncompatibleCodeError, UnregisteredNameError

MODULE = "amber_test_pickle_user_code"
SOURCE = "class Gone:\n    pass\n\n\ndef gone_fn():\n    return 1\n\n\nclass Kept:\n    pass\n"


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bare_pm) -> Path:
    """A pickle checkpoint holding ``MODULE.Gone``, ``MODULE.gone_fn`` and ``MODULE.Kept``, written
    by "amber 0.0.9 on Python 3.10.1"; then ``MODULE`` is no longer imported."""
    source = tmp_path / "src"
    source.mkdir()
    (source / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(source))
    module = __import__(MODULE)
    path = tmp_path / "ck"
    with monkeypatch.context() as m:  # the checkpoint's writer: another amber and Python
        m.setattr("amber.checkpoint_write.__version__", "0.0.9")
        m.setattr(platform, "python_version", lambda: "3.10.1")
        amber.save({"cls": module.Gone, "obj": module.Kept(), "fn": module.gone_fn}, path,
                   format="pickle", pm=bare_pm)
    monkeypatch.delitem(sys.modules, MODULE)
    return path


def _load_error(path: Path, pm) -> IncompatibleCodeError:
    with pytest.raises(UnregisteredNameError) as e:
        amber.load(path, allow_pickle=True, pm=pm)
    assert type(e.value) is IncompatibleCodeError and not isinstance(e.value, CorruptCheckpointError)
    return e.value


@pytest.mark.parametrize("removed", ["Gone", "gone_fn"])
def test_a_name_the_module_no_longer_defines_is_incompatible_code(saved, bare_pm, removed):
    """It was a CorruptCheckpointError, "cannot be read as 'pickle': AttributeError: Can't get
    attribute", which says the file is damaged."""
    src = saved.parent / "src" / f"{MODULE}.py"
    kept = SOURCE.replace("class Gone:", "class Renamed:") if removed == "Gone" else SOURCE.replace(
        "def gone_fn", "def renamed_fn")
    src.write_text(kept)
    error = _load_error(saved, bare_pm)
    message = str(error)
    assert (error.module, error.name, error.format) == (MODULE, removed, "pickle")
    assert error.path == str(saved / "state.pkl")
    assert f"{saved / 'state.pkl'} holds '{MODULE}.{removed}'" in message
    assert f"module '{MODULE}' does not define '{removed}'" in message
    assert "intact" in message and "damaged" not in message and "corrupt" not in message.lower()
    assert "amber 0.0.9 on Python 3.10.1" in message  # who wrote it, from its checkpoint.json
    assert f"this is amber {amber.__version__} on Python {platform.python_version()}" in message
    assert "amber.register_class" in message and "plugin" not in message
    copy = pickle.loads(pickle.dumps(error))  # crosses processes (a background save, a worker) whole
    assert (type(copy), copy.module, copy.name, copy.path, str(copy)) == (
        IncompatibleCodeError, MODULE, removed, error.path, message)


def test_a_module_that_cannot_be_imported_says_the_same(saved, bare_pm):
    """The module case (an UnregisteredNameError already) names the module as before, and now
    also says the file is intact and who wrote it, in the same words."""
    (saved.parent / "src" / f"{MODULE}.py").unlink()
    error = _load_error(saved, bare_pm)
    message = str(error)
    assert (error.module, error.name, error.format) == (MODULE, None, "pickle")
    assert f"the module '{MODULE}', which cannot be imported here" in message and "state.pkl" in message
    assert "Make that module importable" in message
    assert "intact" in message and "amber 0.0.9 on Python 3.10.1" in message
    assert "amber.register_class" in message and "plugin" not in message


def test_a_module_whose_import_fails_on_a_dependency_names_the_module_and_why(saved, bare_pm):
    (saved.parent / "src" / f"{MODULE}.py").write_text("import amber_test_no_such_dependency\n" + SOURCE)
    error = _load_error(saved, bare_pm)
    assert error.module == MODULE and error.name is None
    assert "No module named 'amber_test_no_such_dependency'" in str(error)


def test_the_unchanged_code_still_loads(saved, bare_pm):
    state = amber.load(saved, allow_pickle=True, pm=bare_pm)
    assert state["cls"].__name__ == "Gone" and state["fn"]() == 1
