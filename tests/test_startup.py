"""Start-up: ``--version``, and what ``--help`` imports (a count of modules, not a time)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import blanket

HEAVY = (
    "boto3",
    "botocore",
    "rich",
    "gnupg",
    "zstandard",
    "cryptography",
    "msgpack",
    "pathspec",
    "json",
    "dataclasses",
    "tempfile",
    "blanket.oplog",
    "blanket.ui",
    "blanket.repo",
    "blanket.state",
    "blanket.indexfmt",
)


def _imported_by(*argv: str) -> tuple[int, list[str]]:
    """(exit code, modules imported) when ``blanket ARGV`` runs in a fresh interpreter."""
    code = (
        "import json, sys; before = set(sys.modules); from blanket import cli; "
        f"rc = cli.main({list(argv)!r}); "
        "print(json.dumps([rc, sorted(set(sys.modules) - before)]), file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, modules = json.loads(proc.stderr.splitlines()[-1])
    return rc, modules


def test_version_prints_the_installed_version() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "blanket", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"blanket {importlib.metadata.version('blanket')}"
    assert blanket.__version__ == importlib.metadata.version("blanket")


def test_help_imports_nothing_heavy() -> None:
    rc, modules = _imported_by("--help")
    assert rc == 0
    ours = [m for m in modules if m.startswith("blanket")]
    assert sorted(ours) == [
        "blanket",
        "blanket.cli",
        "blanket.commands",
        "blanket.commands.common",
        "blanket.errors",
    ]
    assert not [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY]
    # argparse and what it needs (gettext, shutil, textwrap...): 22 modules today
    assert len(modules) <= 30, modules


def test_version_imports_no_more_than_help() -> None:
    rc, modules = _imported_by("--version")
    _, for_help = _imported_by("--help")
    assert rc == 0
    assert set(modules) <= set(for_help)


def test_a_usage_error_is_still_reported_and_logged() -> None:
    """The lazy path: a command line that does not parse still gets the one-line error
    (and exit 2) from the full machinery, which imports the op log."""
    rc, modules = _imported_by("no-such-command")
    assert rc == 2
    assert "blanket.oplog" in modules
