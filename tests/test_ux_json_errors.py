"""Every command's --json output parses line by line; every error is one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from blanket.backup import BackupOptions, run_backup
from blanket.repo import Repository

pytest_plugins = ["uxutil"]
pytestmark = pytest.mark.usefixtures("no_user_config")


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_bytes(b"alpha\n")
    (src / "b.txt").write_bytes(b"beta\n")
    return src


def parsed(text: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(r, dict) and isinstance(r.get("type"), str) for r in records)
    return records


def test_every_command_speaks_json_lines(
    bl, cli, keyring, repo: Repository, repo_url: str, tmp_path: Path
) -> None:
    src = source(tmp_path)
    assert run_backup(repo, str(src), BackupOptions()).complete
    (src / "c.txt").write_bytes(b"gamma\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[profiles.p]\nsource = "{src}"\nrepository = "{repo_url}"\n')
    other = str(tmp_path / "other")
    stdout_commands = [
        ("init", "--repo", other, "--key", keyring.fingerprint),
        ("backup", "--repo", repo_url, str(src)),
        ("status", "--repo", repo_url),
        ("status", "--repo", repo_url, "--warn-age", "1h"),
        ("layers", "--repo", repo_url),
        ("ls", "--repo", repo_url),
        ("diff", "--repo", repo_url),
        ("changes", "--repo", repo_url, "--from", "0"),
        ("restore", "--repo", repo_url, "--to", str(tmp_path / "out")),
        ("verify", "--repo", repo_url),
        ("gc", "--repo", repo_url, "--dry-run", "--cap", "1G"),
        ("sync", "--from", repo_url, "--to", str(tmp_path / "replica")),
        ("config", "check", "--config", str(cfg)),
        ("config", "show", "--config", str(cfg)),
    ]
    for args in stdout_commands:
        r = bl(*args, "--json", check=0)
        records = parsed(r.out)
        assert records, args
        assert r.err == "", (args, r.err)
    r = bl("cat", "--repo", repo_url, "b.txt", "--json", check=0)
    assert r.out == "beta\n" and parsed(r.err)[-1]["type"] == "summary"  # stdout: the data
    r = cli("restore", "--repo", repo_url, "--to", "-", "--json", check=0)
    assert parsed(r.err)[-1]["type"] == "summary"
    failing = bl("ls", "--repo", str(tmp_path / "none"), "--json", check=10)
    (error,) = parsed(failing.out)
    assert error["type"] == "error" and error["exit_code"] == 10
    assert len(failing.err.splitlines()) == 1


def test_every_error_is_one_line_saying_what_to_do(
    bl, cli, keyring, repo: Repository, repo_url: str, tmp_path: Path
) -> None:
    src = source(tmp_path)
    assert run_backup(repo, str(src), BackupOptions()).complete
    empty_keyring = Path(tempfile.mkdtemp(prefix="bgpg", dir="/tmp"))  # short: agent socket
    empty_keyring.chmod(0o700)
    broken = tmp_path / "broken.toml"
    broken.write_text('[profiles.p]\ncap = "lots"\n')
    cases = [
        (10, "blanket init", ("ls", "--repo", str(tmp_path / "none"))),
        (12, "secret key", ("ls", "--repo", repo_url, "--gnupghome", str(empty_keyring))),
        (2, "not a size", ("backup", "--repo", repo_url, str(src), "--pack-size", "12X")),
        (2, "not a duration", ("backup", "--repo", repo_url, str(src), "--max-time", "soon")),
        (2, "ISO time", ("ls", "--repo", repo_url, "--at", "yesterday")),
        (2, "not in the backup", ("cat", "--repo", repo_url, "nope.txt", "--at", "0")),
        (2, "not in the backup", ("restore", "--repo", repo_url, "--to", str(tmp_path / "o"), "x")),
        (2, "not a directory", ("backup", "--repo", repo_url, str(src / "b.txt"))),
        (2, "--force", ("restore", "--repo", repo_url, "--to", str(src))),
        (2, "invalid choice", ("frobnicate",)),
        (2, "required", ("restore", "--repo", repo_url)),
        (2, "no repository given", ("ls",)),
        (2, "broken.toml:2: profiles.p.cap", ("ls", "--config", str(broken), "--profile", "p")),
        (2, "is a directory", ("cat", "--repo", repo_url, "docs")),
        (2, "ISO time", ("diff", "--repo", repo_url, "--from", "last week")),
        (1, "already holds", ("init", "--repo", repo_url, "--key", keyring.fingerprint)),
        (2, "one repository per source", ("backup", "--repo", repo_url, str(tmp_path))),
    ]
    for code, words, args in cases:
        r = bl(*args)
        assert r.code == code, (args, r)
        lines = r.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("blanket: error: "), (args, r.err)
        assert words in lines[0], (args, lines[0])
    subprocess.run(["gpgconf", "--homedir", str(empty_keyring), "--kill", "all"], check=False)
    shutil.rmtree(empty_keyring, ignore_errors=True)
