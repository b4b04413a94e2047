"""Fixtures for the everyday-use tests (``pytest_plugins = ["uxutil"]``): the real CLI
run in this process (fast), and an environment free of the user's own config (use it
with ``pytestmark = pytest.mark.usefixtures("no_user_config")``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from blanket.cli import main


@dataclass
class Ran:
    code: int
    out: str
    err: str


Blanket = Callable[..., Ran]


@pytest.fixture
def bl(keyring, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Blanket:
    """``bl("ls", "--repo", url, check=0)``: blanket's ``main`` in this process, with the
    test keyring; returns the exit code and what it printed."""
    monkeypatch.setenv("GNUPGHOME", keyring.home)

    def run(*args: str, check: int | None = None) -> Ran:
        capsys.readouterr()
        code = main(list(args))
        got = capsys.readouterr()
        ran = Ran(code, got.out, got.err)
        if check is not None:
            assert code == check, (args, ran)
        return ran

    return run


@pytest.fixture
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No config file unless a test writes one (to the returned XDG folder)."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in ("BLANKET_CONFIG", "BLANKET_REPO", "BLANKET_PASSPHRASE_FILE"):
        monkeypatch.delenv(name, raising=False)
    return home
