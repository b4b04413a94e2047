"""The examples and the docs work as written: the recovery walk-through runs against a
real repository, and every blanket command line in the docs parses."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from blanket.backup import BackupOptions, run_backup
from blanket.cli import parser_for
from blanket.repo import Repository

ROOT = Path(__file__).resolve().parent.parent
WALK = ROOT / "examples" / "recover-by-hand.sh"
KiB = 1024


def build(repo: Repository, src: Path) -> None:
    (src / "docs" / "2024").mkdir(parents=True)
    (src / "docs" / "2024" / "report.txt").write_bytes(b"old report\n")
    (src / "café menu, = list.txt").write_bytes(b"odd name\n")
    (src / "gone").mkdir()
    (src / "gone" / "x.txt").write_bytes(b"in a folder that goes away\n")
    (src / "big.iso").write_bytes(os.urandom(200 * KiB))  # split: pack size 64 KiB
    (src / "one").write_bytes(b"two names\n")
    os.link(src / "one", src / "two")
    os.symlink("one", src / "link")
    opts = BackupOptions(pack_size=64 * KiB)
    assert run_backup(repo, str(src), opts).complete
    (src / "docs" / "2024" / "report.txt").write_bytes(b"new report, longer\n")
    (src / "gone" / "x.txt").unlink()
    (src / "gone").rmdir()
    (src / "big.iso").write_bytes(os.urandom(150 * KiB))
    assert run_backup(repo, str(src), opts).complete


def walk_through(
    repo_url: str, path: str, out: Path, gnupghome: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "GNUPGHOME": gnupghome, "HOME": str(out.parent)}
    return subprocess.run(
        ["bash", str(WALK), repo_url, path, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_file_is_recovered_by_hand(
    repo: Repository, repo_url: str, keyring, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    build(repo, src)
    for path in ("docs/2024/report.txt", "café menu, = list.txt", "big.iso", "two"):
        out = tmp_path / "out.bin"
        done = walk_through(repo_url, path, out, keyring.home)
        assert done.returncode == 0, (path, done.stderr)
        assert out.read_bytes() == (src / path).read_bytes(), path
        assert done.stderr.splitlines()[-1] == f"recover-by-hand: recovered {path} into {out}"
    for path, words in (
        ("gone/x.txt", "was deleted"),
        ("docs", "is a folder"),
        ("link", "is a symlink to one"),
        ("never/there", "never backed up"),
    ):
        done = walk_through(repo_url, path, tmp_path / "no", keyring.home)
        assert done.returncode == 2 and words in done.stderr, (path, done.stderr)
    wrong = walk_through(repo_url, "two", tmp_path / "no", str(tmp_path))
    assert wrong.returncode == 1 and "cannot decrypt config" in wrong.stderr


def command_lines(text: str, markdown: bool) -> list[list[str]]:
    """Every ``blanket ...`` command (in the code blocks of markdown), cut at the first
    pipe, redirection or comment."""
    found = []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if markdown and not fenced:
            continue
        line = re.sub(r"(^|\s)#.*", "", line)  # a shell comment
        m = re.search(r"(?:^|\s)(?:\S*/)?blanket (?=[a-z-])", line)
        before = line[: m.start()].split() if m else []
        if m is None or not all(re.fullmatch(r"\S+=\S*|\$|[\d*/,-]+", w) for w in before):
            continue  # not the program: a path or an argument of another command
        words = []
        for word in shlex.split(line[m.end() :], comments=True):
            if word in ("|", "||", "&&", ";") or word.startswith((">", "|", "2>")):
                break
            words.append(word)
        found.append(words)
    return found


@pytest.mark.parametrize(
    "doc",
    ["README.md", "docs/guide.md", "examples/crontab", "examples/systemd/blanket-backup.service"],
)
def test_every_command_in_the_docs_parses(doc: str) -> None:
    text = (ROOT / doc).read_text()
    if doc.endswith(".service"):
        text = text.replace("ExecStart=%h/.local/bin/", "").replace("%h", "/home/me")
    lines = command_lines(text, doc.endswith(".md"))
    assert lines, doc
    for words in lines:
        args = parser_for(words).parse_args(words)  # raises UsageError (one line) if wrong
        assert args.command, words
