"""Install the test plugins in ``tests/plugins/`` the way a user would, without a network.

:func:`install_npz_plugin` runs ``pip install`` on the ``amber-npz`` source tree
into a target directory; :func:`on_sys_path` makes that directory importable
(and its entry points visible) for as long as a test needs it.

Usage from a fixture::

    @pytest.fixture(scope="session")
    def npz_site(tmp_path_factory):
        return install_npz_plugin(tmp_path_factory.mktemp("npz-site"))

    def test_something(npz_site):
        with on_sys_path(npz_site):
            pm = get_plugin_manager()
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "NPZ_DISTRIBUTION",
    "NPZ_MODULE",
    "NPZ_SOURCE",
    "install_npz_plugin",
    "on_sys_path",
]

#: The source tree of the ``amber-npz`` distribution.
NPZ_SOURCE = Path(__file__).resolve().parent / "amber_npz"
#: Its distribution name, version, module and entry point, as in its pyproject.toml
#: (a test checks that they agree).
NPZ_DISTRIBUTION = "amber-npz"
NPZ_VERSION = "0.1.0"
NPZ_MODULE = "amber_npz"
NPZ_ENTRY_POINT = "npz"
NPZ_REQUIRES = ("numpy>=1.24",)

#: Output of a failed pip run that means "this environment cannot build wheels"
#: (setuptools < 70.1 without the ``wheel`` package, or no setuptools at all),
#: not "the package is broken".
_NO_BUILD_TOOLS = (
    "invalid command 'bdist_wheel'",
    "No module named 'setuptools'",
    "Cannot import 'setuptools.build_meta'",
)
PIP_TIMEOUT_S = 300


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PIP_DISABLE_PIP_VERSION_CHECK="1",  # no request to the index for pip's own version
        PIP_NO_INDEX="1",
        PIP_NO_INPUT="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def install_npz_plugin(target_dir: str | os.PathLike[str]) -> Path:
    """Install the ``amber-npz`` distribution into ``target_dir`` with pip, offline.

    Runs ``python -m pip install --no-deps --no-build-isolation --no-index
    --target TARGET SRC`` on a copy of the source tree (so that the build
    leaves nothing in the repository). If pip cannot build a wheel because
    the environment lacks the build tools (setuptools >= 70.1, or older
    setuptools plus ``wheel``), the package is installed by hand instead: the
    module and an ``amber_npz-0.1.0.dist-info`` directory with ``METADATA`` and
    ``entry_points.txt``, which is all that entry-point discovery reads; a
    :class:`UserWarning` says so.

    :param target_dir: an empty (or not yet existing) directory.
    :return: ``target_dir`` as a :class:`~pathlib.Path`: put it on ``sys.path``
        (see :func:`on_sys_path`) or ``PYTHONPATH`` to use the plugin.
    :raises RuntimeError: pip failed for any other reason (its output is included).
    """
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="amber-npz-src-") as tmp:
        source = Path(tmp) / NPZ_SOURCE.name
        shutil.copytree(
            NPZ_SOURCE,
            source,
            ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"),
        )
        cmd = [
            sys.executable, "-m", "pip", "install",
            "--no-deps", "--no-build-isolation", "--no-index",
            "--target", str(target), str(source),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=_pip_env(), timeout=PIP_TIMEOUT_S,
            check=False,
        )
    if proc.returncode == 0:
        return target
    output = proc.stdout + proc.stderr
    if not any(marker in output for marker in _NO_BUILD_TOOLS):
        raise RuntimeError(
            f"pip could not install {NPZ_DISTRIBUTION} (exit {proc.returncode}):\n{output}"
        )
    warnings.warn(
        f"pip cannot build wheels in this environment (install setuptools>=70.1); "
        f"installed {NPZ_DISTRIBUTION} into {target} by hand instead",
        UserWarning,
        stacklevel=2,
    )
    _install_by_hand(target)
    return target


def _install_by_hand(target: Path) -> None:
    """Lay out what pip would: the module and a ``.dist-info`` with its metadata."""
    module = f"{NPZ_MODULE}.py"
    shutil.copy2(NPZ_SOURCE / module, target / module)
    dist_info = target / f"{NPZ_DISTRIBUTION.replace('-', '_')}-{NPZ_VERSION}.dist-info"
    dist_info.mkdir(exist_ok=True)
    files = {
        "METADATA": "".join(
            [
                "Metadata-Version: 2.1\n",
                f"Name: {NPZ_DISTRIBUTION}\n",
                f"Version: {NPZ_VERSION}\n",
                "Requires-Python: >=3.10\n",
                *(f"Requires-Dist: {req}\n" for req in NPZ_REQUIRES),
            ]
        ),
        "entry_points.txt": f"[amber]\n{NPZ_ENTRY_POINT} = {NPZ_MODULE}\n",
        "top_level.txt": f"{NPZ_MODULE}\n",
        "INSTALLER": "amber-tests\n",
    }
    for name, text in files.items():
        (dist_info / name).write_text(text, encoding="utf-8")
    record = [f"{module},,"] + [f"{dist_info.name}/{name},," for name in files]
    record.append(f"{dist_info.name}/RECORD,,")
    (dist_info / "RECORD").write_text("\n".join(record) + "\n", encoding="utf-8")


@contextlib.contextmanager
def on_sys_path(site: str | os.PathLike[str], modules: tuple[str, ...] = (NPZ_MODULE,)) -> Iterator[Path]:
    """Put ``site`` first on ``sys.path`` for the duration of the block.

    On exit the entry is removed and ``modules`` imported from it are
    forgotten, so later tests see neither the distribution nor its module.

    :param site: a directory filled by :func:`install_npz_plugin`.
    :param modules: top-level modules installed there.
    :return: ``site`` as a :class:`~pathlib.Path`.
    """
    path = str(site)
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    try:
        yield Path(site)
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(path)
        for name in modules:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()
