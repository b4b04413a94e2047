"""The house's one direction (``.importlinter``) holds, and is no decoration: the same
contract fails on a copy of the package in which a core module imports
``blanket.restore`` lazily, inside a function."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def _lint(package_parent: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(package_parent))  # the copy, not the install
    return subprocess.run(
        [str(LINT), "--no-cache", str(ROOT / ".importlinter")],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(  # blanket/backends and blanket/restore are links: copied as folders
        ROOT / "blanket", tmp_path / "blanket", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_contract_holds(tmp_path: Path) -> None:
    r = _lint(_copy(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_a_core_module_importing_restore_breaks_it(tmp_path: Path) -> None:
    parent = _copy(tmp_path)
    with open(parent / "blanket" / "gc.py", "a") as f:
        f.write("\n\ndef _probe() -> None:\n    from blanket.restore.plan import Plan  # noqa\n")
    r = _lint(parent)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "The core never imports blanket.restore, not even lazily BROKEN" in r.stdout
    assert "blanket.gc -> blanket.restore.plan" in r.stdout
