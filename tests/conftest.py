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
