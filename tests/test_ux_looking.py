"""Looking around: diff between points, cat of one file, restore --to - as a tar stream."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blanket import model
from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.indexfmt import IndexHeader, render_index
from blanket.model import Entry
from blanket.packer import PackWriter
from blanket.repo import Repository

KiB = 1024
NON_UTF8 = b"caf\xe9 menu.txt"


pytest_plugins = ["uxutil"]
pytestmark = pytest.mark.usefixtures("no_user_config")


def build(repo: Repository, tmp_path: Path) -> Path:
    """Two layers: layer 0 as made here, layer 1 after ``change``."""
    src = tmp_path / "src"
    (src / "docs" / "2024").mkdir(parents=True)
    (src / "docs" / "2024" / "report.txt").write_bytes(b"first report\n")
    (src / "docs" / "old.txt").write_bytes(b"to be deleted\n")
    (src / "gone").mkdir()
    (src / "gone" / "inside.txt").write_bytes(b"in a folder that goes away\n")
    (src / "big.bin").write_bytes(os.urandom(300 * KiB))  # split: pack size 64 KiB
    (src / "hard").mkdir()
    (src / "hard" / "one").write_bytes(b"one file, two names\n")
    os.link(src / "hard" / "one", src / "hard" / "two")
    os.symlink("docs/2024/report.txt", src / "link")
    (src / "mode.sh").write_bytes(b"#!/bin/sh\n")
    with open(os.path.join(os.fsencode(src), NON_UTF8), "wb") as f:
        f.write(b"latin-1 name\n")
    opts = BackupOptions(pack_size=64 * KiB, pack_entries=4)
    assert run_backup(repo, str(src), opts).complete
    (src / "docs" / "2024" / "report.txt").write_bytes(b"second report, longer\n")
    (src / "docs" / "old.txt").unlink()
    (src / "gone" / "inside.txt").unlink()
    (src / "gone").rmdir()
    (src / "docs" / "new.txt").write_bytes(b"added in layer 1\n")
    os.chmod(src / "mode.sh", 0o755)
    assert run_backup(repo, str(src), opts).complete
    return src


def test_diff_lists_what_each_layer_changed(
    bl, repo: Repository, repo_url: str, tmp_path: Path
) -> None:
    build(repo, tmp_path)
    text = bl("diff", "--repo", repo_url, check=0).out.splitlines()
    assert text[:-1] == [
        "M  docs/2024/report.txt",
        "+  docs/new.txt",
        "-  docs/old.txt",
        "-  gone/",
        "-  gone/inside.txt",
        "U  mode.sh",
    ]
    assert text[-1].startswith("from layer 0 to latest: 1 added, 2 changed, 3 deleted;")
    same = bl("changes", "--repo", repo_url, "--from", "1", "--to", "1", check=0).out
    assert same.startswith("from 1 to 1: 0 added, 0 changed, 0 deleted")
    js = bl("diff", "--repo", repo_url, "--json", "docs", check=0).out.splitlines()
    records = [json.loads(line) for line in js]
    assert [(r["change"], r["path"]) for r in records[:-1]] == [
        ("changed", "docs/2024/report.txt"),
        ("added", "docs/new.txt"),
        ("deleted", "docs/old.txt"),
    ]
    assert records[-1]["type"] == "summary" and records[-1]["added"] == 1
    first = bl("diff", "--repo", repo_url, "--to", "0", "--from", "-1", "--json", check=2)
    assert json.loads(first.out)["type"] == "error"  # "-1" is no point in time
    everything = bl("diff", "--repo", repo_url, "--from", "1999-01-01", "--to", "0", check=0)
    assert "+  docs/old.txt" in everything.out and "+  big.bin" in everything.out


def test_cat_writes_one_file_checked(
    bl, repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = build(repo, tmp_path)
    assert bl("cat", "--repo", repo_url, "docs/2024/report.txt", check=0).out == (
        "second report, longer\n"
    )
    old = bl("cat", "--repo", repo_url, "docs/2024/report.txt", "--at", "0", check=0)
    assert old.out == "first report\n"
    assert bl("cat", "--repo", repo_url, "hard/two", check=0).out == "one file, two names\n"
    env = dict(os.environ, GNUPGHOME=keyring.home, BLANKET_STATE_DIR=str(tmp_path / "state"))
    big = subprocess.run(
        [sys.executable, "-m", "blanket", "cat", "--repo", repo_url, "big.bin"],
        capture_output=True,
        env=env,
        check=True,
    )
    assert big.stdout == (src / "big.bin").read_bytes()
    name = os.fsdecode(NON_UTF8)
    odd = subprocess.run(
        [sys.executable, "-m", "blanket", "cat", "--repo", repo_url, name],
        capture_output=True,
        env=env,
        check=True,
    )
    assert odd.stdout == b"latin-1 name\n"
    for path, words in (
        ("docs", "is a directory"),
        ("link", "is a symlink to docs/2024/report.txt"),
        ("docs/old.txt", "is not in the backup"),
    ):
        r = bl("cat", "--repo", repo_url, path, check=2)
        assert r.out == "" and words in r.err and len(r.err.splitlines()) == 1, r.err
    js = bl("cat", "--repo", repo_url, "docs/new.txt", "--json", check=0)
    assert js.out == "added in layer 1\n"
    assert json.loads(js.err)["bytes"] == len("added in layer 1\n")


def commit_lying_pack(repo: Repository, path: bytes, content: bytes) -> None:
    """A pack signed with the repository key whose index records a wrong SHA-256 for
    ``path`` (what a bug, or a thief holding the key, could produce)."""
    repo.refresh()
    last = repo.headers[-1]
    e = Entry(model.FILE, path, mode=0o644, size=len(content), since=time.time_ns())
    pack = PackWriter(repo.gpg, str(repo.state.spool_dir))
    lie = dataclasses.replace(pack.add_file(e, iter([content])), sha256="0" * 64)
    header = IndexHeader(
        repository=repo.config.id,
        seq=len(repo.headers),
        layer=last.layer + 1,
        layer_pack=0,
        full=False,
        clock_from=None,
        clock_to=path,
        complete=False,
        created=time.time_ns(),
        source_host=last.source_host,
        source_path=last.source_path,
        entries=1,
        prev_index_sha256=repo.last_hash(),
    )
    sealed = pack.seal(render_index(header, [lie], with_data=False))
    repo.commit(sealed, header, [lie])


def test_content_that_does_not_match_its_hash_is_refused(
    bl, repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    build(repo, tmp_path)
    commit_lying_pack(Repository.open(open_backend(repo_url), keyring.home), b"0liar", b"x")
    r = bl("cat", "--repo", repo_url, "0liar", check=1)
    assert r.out == "" and "does not match its SHA-256" in r.err and len(r.err.splitlines()) == 1
    tar = bl("restore", "--repo", repo_url, "--to", "-", "0liar", check=3)
    assert "warning: 0liar: damaged in the tar stream" in tar.err


def test_restore_to_stdout_is_a_tar_stream(
    bl, repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = build(repo, tmp_path)
    env = dict(os.environ, GNUPGHOME=keyring.home, BLANKET_STATE_DIR=str(tmp_path / "state"))
    out = tmp_path / "out"
    out.mkdir()
    blanket = subprocess.Popen(
        [sys.executable, "-m", "blanket", "restore", "--repo", repo_url, "--to", "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    tar = subprocess.run(
        ["tar", "-x", "-C", str(out), "--warning=no-unknown-keyword"],
        stdin=blanket.stdout,
        capture_output=True,
    )
    assert blanket.stdout is not None
    blanket.stdout.close()
    assert blanket.wait() == 0 and tar.returncode == 0, (blanket.stderr.read(), tar.stderr)
    err = blanket.stderr.read().decode() if blanket.stderr else ""
    assert err.startswith("wrote ") and "as a tar stream" in err
    for rel in ("docs/2024/report.txt", "docs/new.txt", "big.bin", "hard/one", "mode.sh"):
        assert (out / rel).read_bytes() == (src / rel).read_bytes(), rel
    with open(os.path.join(os.fsencode(out), NON_UTF8), "rb") as f:
        assert f.read() == b"latin-1 name\n"
    assert os.readlink(out / "link") == "docs/2024/report.txt"
    assert (out / "hard" / "one").stat().st_ino == (out / "hard" / "two").stat().st_ino
    assert (out / "mode.sh").stat().st_mode & 0o777 == 0o755
    assert int((out / "big.bin").stat().st_mtime) == int((src / "big.bin").stat().st_mtime)
    assert not (out / "docs" / "old.txt").exists() and not (out / "gone").exists()

    listing = subprocess.run(
        f"{sys.executable} -m blanket restore --repo {repo_url} --to - --at 0 docs | tar -t",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert sorted(listing) == ["docs/", "docs/2024/", "docs/2024/report.txt", "docs/old.txt"]
    unknown = bl("restore", "--repo", repo_url, "--to", "-", "nothing/here", check=2)
    assert unknown.out == "" and len(unknown.err.splitlines()) == 1
