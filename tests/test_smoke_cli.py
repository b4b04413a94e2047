"""The CLI end to end on a small tree: init, backup, restore, exit codes."""

from __future__ import annotations

from pathlib import Path


def test_backup_then_restore_gives_the_same_bytes(cli, keyring, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_bytes(b"hello\n")
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    cli("backup", "--repo", repo, str(src), check=0)
    cli("restore", "--repo", repo, "--to", str(tmp_path / "out"), check=0)
    assert (tmp_path / "out" / "d" / "f.txt").read_bytes() == b"hello\n"


def test_missing_repository_exits_10(cli, tmp_path: Path) -> None:
    r = cli("ls", "--repo", str(tmp_path / "nothing"))
    assert r.code == 10
    assert "blanket init" in r.err
    assert len(r.err.strip().splitlines()) == 1
