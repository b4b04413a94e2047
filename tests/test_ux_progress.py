"""Progress: a live display on a real pseudo-terminal, only the summary elsewhere, nothing
with --quiet, JSON lines with --json; the pass estimate behind the percentage."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from blanket import estimate, model
from blanket.backup import BackupOptions, run_backup
from blanket.events import FileStored, PackCommitted, Position, Reading
from blanket.repo import Repository
from blanket.ui import Output

MiB = 1 << 20


pytest_plugins = ["uxutil"]
pytestmark = pytest.mark.usefixtures("no_user_config")


def make_tree(src: Path, files: int = 12, size: int = MiB // 2) -> None:
    (src / "sub").mkdir(parents=True)
    for i in range(files):
        (src / "sub" / f"f{i:03d}").write_bytes(os.urandom(size))
    (src / "large.bin").write_bytes(os.urandom(6 * MiB))


def on_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run the real CLI with stdout and stderr on a pseudo-terminal 160 columns wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "blanket", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "160"},
        close_fds=True,
    )
    os.close(slave)
    seen = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=10)
    os.close(master)
    return code, seen.decode("utf-8", "replace")


def test_backup_on_a_terminal_shows_a_live_rate_and_share(bl, keyring, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    repo = str(tmp_path / "repo")
    bl("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    env = {"GNUPGHOME": keyring.home, "BLANKET_STATE_DIR": str(tmp_path / "state")}
    args = ["backup", "--repo", repo, str(src), "--pack-size", "1M", "--limit-upload", "16M"]
    code, screen = on_pty(args, env)
    assert code == 0, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert re.search(r"\d+(\.\d)? (B|KiB|MiB)/s", plain), plain  # a rate
    assert re.search(r"\b\d{1,3}%", plain), plain  # a share of the pass (from the scan)
    assert "backup src" in plain
    assert "reading large.bin" in plain  # the heartbeat of a large file
    assert "layer 0: committed" in plain  # the summary stays after the display
    # a second pass measures itself against the first one
    (src / "sub" / "f005").write_bytes(os.urandom(1000))
    code, screen = on_pty(args, env)
    assert code == 0, screen
    assert "layer 1: committed" in screen


def test_without_a_terminal_only_the_summary(bl, repo_url: str, repo, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, files=3, size=1000)
    r = bl("backup", "--repo", repo_url, str(src), check=0)
    assert r.err == ""
    assert r.out.count("\n") == 1 and "pass complete" in r.out
    (src / "new").write_bytes(b"x")
    quiet = bl("backup", "--repo", repo_url, str(src), "--quiet", check=0)
    assert quiet.out == "" and quiet.err == ""
    (src / "newer").write_bytes(b"y")
    js = bl("backup", "--repo", repo_url, str(src), "--json", check=0)
    records = [json.loads(line) for line in js.out.splitlines()]
    assert records[-1]["type"] == "summary" and records[-1]["complete"] is True
    assert {r["type"] for r in records} <= {"commit", "progress", "summary"}
    assert js.err == ""


def test_the_display_is_throttled_whatever_the_rate_of_events() -> None:
    """100k events in 100 s of a counted clock (a millisecond per reading) are drawn at
    most ten times a second, plus once per commit: the draws are counted, not timed."""
    ticks = iter(range(10**9))
    out = Output(clock=lambda: next(ticks) / 1000)
    sink = io.StringIO()
    out.err = Console(file=sink, force_terminal=True, width=120)
    out.live = True
    out.begin("backup test")
    events = 0
    for i in range(100_000):
        out.event(FileStored(b"f%d" % i, 10))
        events += 1
        if i % 1000 == 0:
            out.event(Position(b"f%d" % i))
            events += 1
    out.event(Reading(b"big", 4 * MiB, 8 * MiB))
    out.event(PackCommitted(0, 0, 10, 100, b"f9"))
    seconds = (events + 2) / 1000  # of the counted clock
    out.stop_live()
    assert 0 < out.draws <= seconds * 10 + 2, out.draws
    assert "files" in sink.getvalue()


def test_the_previous_pass_gives_the_share_of_the_clock(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for d in ("a", "b", "c", "d"):
        (src / d).mkdir(parents=True)
        for i in range(50):
            (src / d / f"{i:02d}").write_bytes(b"x" * 10)
    assert run_backup(repo, str(src), BackupOptions()).complete
    repo.refresh()
    marks = estimate.previous_pass(repo)
    assert marks is not None
    assert marks.entries == 1 + 4 + 200 and marks.size == 2000
    assert marks.fraction(b"b/49") < marks.fraction(b"c/00") < marks.fraction(b"d/49")
    assert 0.45 < marks.fraction(b"b/49") < 0.55
    assert marks.fraction(b"d/49") == 1.0
    cached = (repo.state.dir / estimate.CACHE).read_text()
    assert estimate.previous_pass(repo) == marks  # from the cache
    assert estimate.Marks.from_json(cached) == marks
    guess = estimate.for_backup(repo, str(src), [])
    assert guess.fraction(b"a/00", 0) is not None and guess.scan is None


def test_the_first_pass_is_measured_by_a_scan(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"{i}").write_bytes(b"y" * 100)
    (src / "skip.tmp").write_bytes(b"z" * 5000)
    repo.refresh()
    guess = estimate.for_backup(repo, str(src), ["*.tmp"])
    assert guess.scan is not None
    guess.scan.join(10)
    assert guess.total_bytes() == (1000, True)
    assert guess.fraction(None, 500) == 0.5


def test_a_stopped_pass_reports_the_share_of_the_tree_it_covered(
    repo: Repository, tmp_path: Path
) -> None:
    """The coverage comes from the run's own replay (counted to its end after the run
    stopped): the share of the tree's entries at or before the clock pointer."""
    src = tmp_path / "src"
    for d in ("a", "b", "c", "d"):
        (src / d).mkdir(parents=True)
        for i in range(20):
            (src / d / f"{i:02d}").write_bytes(os.urandom(4000))
    assert run_backup(repo, str(src), BackupOptions()).complete
    for d in ("a", "b", "c", "d"):  # every file changes: the next pass must read them all
        for i in range(20):
            (src / d / f"{i:02d}").write_bytes(os.urandom(4000))
    repo.refresh()
    result = run_backup(repo, str(src), BackupOptions(max_bytes=130_000, pack_size=64 << 10))
    assert result.stopped_early and result.pointer is not None
    folders = [b"a", b"b", b"c", b"d"]
    paths = [b".", *folders] + [b"%s/%02d" % (d, i) for d in folders for i in range(20)]
    key = model.clock_key(result.pointer)
    done = sum(1 for p in paths if model.clock_key(p) <= key)
    assert result.coverage == done / len(paths)
    assert 0 < result.coverage < 1
