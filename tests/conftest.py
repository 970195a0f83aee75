"""Shared fixtures: a fresh plugin manager per test, never a global one."""

from __future__ import annotations

import pytest

from amber.plugin_manager import get_plugin_manager


@pytest.fixture
def pm():
    """A fresh plugin manager with the in-tree plugins and the installed ones."""
    return get_plugin_manager()


@pytest.fixture
def bare_pm():
    """A fresh plugin manager with the in-tree plugins only (autoload off)."""
    return get_plugin_manager(autoload=False)


@pytest.fixture(scope="session")
def npz_site(tmp_path_factory):
    """The third-party ``amber-npz`` plugin, pip-installed offline once per session."""
    from tests.plugins.install import install_npz_plugin

    return install_npz_plugin(tmp_path_factory.mktemp("amber-npz-site"))


@pytest.fixture
def contract_pm(npz_site, monkeypatch):
    """A fresh plugin manager with every format: in-tree and the installed third-party one."""
    from tests.plugins.install import on_sys_path

    for name in ("AMBER_DISABLE_PLUGIN_AUTOLOAD", "AMBER_PLUGINS", "AMBER_SAFE_LOAD"):
        monkeypatch.delenv(name, raising=False)
    with on_sys_path(npz_site):
        yield get_plugin_manager()


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path_factory, monkeypatch):
    """Default checkpoints (``algo.save()`` with no dir) go to a temporary results dir, not ~."""
    monkeypatch.setenv("AMBER_RESULTS_DIR", str(tmp_path_factory.getbasetemp() / "amber_results"))


@pytest.fixture(scope="session", autouse=True)
def _signing_key_in_tmp(tmp_path_factory):
    """One signing key (``AMBER_KEY_FILE``) for the test session, in a temporary directory: no test
    reads or writes the real ~/.config/amber, and every checkpoint a test saves is signed with it.
    Session-scoped, so that it is in place before any fixture of any scope saves a checkpoint."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AMBER_KEY_FILE", str(tmp_path_factory.getbasetemp() / "amber-key" / "signing.key"))
        yield
