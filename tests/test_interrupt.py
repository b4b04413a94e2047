"""Interruptions as they really happen: SIGKILL, SIGINT, budgets, lost local state,
unreadable files. The real CLI runs in a subprocess."""

from __future__ import annotations

import encodings.ascii  # noqa: F401 - these are loaded before forking children that
import encodings.latin_1  # noqa: F401   run as nobody, who cannot read the interpreter's
import encodings.utf_8  # noqa: F401     library under /root
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import blanket.cli
from blanket.backends import open_backend
from blanket.repo import Repository
from blanket.restore.run import RestoreOptions, run_restore


def _make_tree(root: Path, files: int, size: int, seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(files):
        rel = f"d{i % 7}/sub{i % 3}/file{i:04d}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size + i)
        p.write_bytes(data)
        out[rel] = data
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _env(keyring: Any, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GNUPGHOME"] = keyring.home
    env["BLANKET_STATE_DIR"] = str(tmp_path / "state")
    return env


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "blanket", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _restore_check(repo_url: str, home: str, source: dict[str, bytes], target: Path) -> int:
    """Restore what is committed; every file must be right. Returns how many came back."""
    repo = Repository.open(open_backend(repo_url), home)
    result = run_restore(repo, RestoreOptions(str(target)))
    assert result.problems == []
    got = _files(target)
    for name, data in got.items():
        assert source[name] == data, f"{name} restored with wrong content"
    committed = {
        os.fsdecode(e.path) for h in repo.headers for e in repo.entries(h.seq) if e.kind == "f"
    }
    assert set(got) >= committed
    shutil.rmtree(target)
    return len(got)


def _commits(repo_url: str) -> int:
    index = Path(repo_url) / "index"
    return len(list(index.iterdir())) if index.exists() else 0


def _wait_for_commits(repo_url: str, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while _commits(repo_url) < n and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def test_sigkill_at_arbitrary_moments_loses_nothing_committed(
    cli: Any, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    source = _make_tree(src, files=120, size=150_000)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    env = _env(keyring, tmp_path)
    kills = 0
    restored_counts = []
    for attempt in range(40):
        before = _commits(repo)
        proc = _start(["backup", "--repo", repo, "--pack-size", "512K", str(src)], env)
        _wait_for_commits(repo, before + 1 + attempt % 3, proc)
        if proc.poll() is None:
            time.sleep(random.Random(attempt).uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            restored_counts.append(
                _restore_check(repo, keyring.home, source, tmp_path / f"after-kill-{attempt}")
            )
            continue
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert "pass complete" in out
        break
    else:
        raise AssertionError("the backup never finished")
    assert kills >= 3, "the tree was too small to interrupt"
    assert restored_counts == sorted(restored_counts), "a kill lost committed files"
    out = tmp_path / "final"
    cli("restore", "--repo", repo, "--to", str(out), check=0)
    assert _files(out) == source


def test_sigint_commits_what_is_sealed_and_exits_0(cli: Any, keyring: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    source = _make_tree(src, files=120, size=150_000)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    proc = _start(
        ["backup", "--repo", repo, "--pack-size", "256K", str(src)], _env(keyring, tmp_path)
    )
    _wait_for_commits(repo, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "committed" in out and "clock at" in out, out
    assert len(out.strip().splitlines()) == 1
    got = _restore_check(repo, keyring.home, source, tmp_path / "out")
    assert 0 < got < len(source)
    cli("backup", "--repo", repo, str(src), check=0)
    final = tmp_path / "final"
    cli("restore", "--repo", repo, "--to", str(final), check=0)
    assert _files(final) == source


def test_max_bytes_stops_early_and_the_next_run_continues_without_rescan(
    cli: Any, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    source = _make_tree(src, files=30, size=100_000)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    first = cli("backup", "--repo", repo, "--pack-size", "200K", "--max-bytes", "1M", str(src))
    assert first.code == 0 and "clock at" in first.out
    stored = sum(p.stat().st_size for p in (Path(repo) / "data").iterdir())
    assert stored < 1.6 * (1 << 20)
    # the local state is lost (a new laptop): the store alone says where to go on
    shutil.rmtree(tmp_path / "state")
    second = cli("backup", "--repo", repo, "--pack-size", "200K", "--json", str(src), check=0)
    assert '"complete": true' in second.out
    total = sum(p.stat().st_size for p in (Path(repo) / "data").iterdir())
    assert total < sum(len(v) for v in source.values()) * 1.05, "committed files went up twice"
    out = tmp_path / "out"
    cli("restore", "--repo", repo, "--to", str(out), check=0)
    assert _files(out) == source


def test_if_older_than_does_nothing_after_a_recent_commit(
    cli: Any, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    _make_tree(src, files=3, size=10)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    cli("backup", "--repo", repo, str(src), check=0)
    (src / "new").write_text("new")
    r = cli("backup", "--repo", repo, "--if-older-than", "1h", "--quiet", str(src), check=0)
    assert r.out == "" and r.err == ""
    assert _commits(repo) == 1
    cli("backup", "--repo", repo, "--if-older-than", "0s", str(src), check=0)
    assert _commits(repo) == 2


def test_unreadable_files_are_listed_exit_3_and_are_retried_next_pass() -> None:
    """Run as the unprivileged user nobody, for whom a mode-000 file is unreadable."""
    nobody = 65534
    home = Path(tempfile.mkdtemp(prefix="bn", dir="/tmp"))  # reachable by nobody
    try:
        os.chown(home, nobody, nobody)
        _unreadable_scenario(home, nobody)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home / "g"), "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


def _as_nobody(nobody: int, env: dict[str, str], args: list[str]) -> tuple[int, str, str]:
    """Run ``args`` as user nobody: a program with fork+setuid, or blanket's CLI
    in-process in a forked child (the interpreter lives under /root, out of nobody's
    reach, but the child already has every module loaded)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - pytest replaced them
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            os.setgid(nobody)
            os.setuid(nobody)
            os.environ.clear()
            os.environ.update(env)
            if args[0] == "blanket":
                code = blanket.cli.main(args[1:])
            else:
                os.execvpe(args[0], args, env)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as o, os.fdopen(err_r) as e:
        out, err = o.read(), e.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


def _unreadable_scenario(home: Path, nobody: int) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GNUPGHOME": str(home / "g"),
        "BLANKET_STATE_DIR": str(home / "state"),
    }

    def run(*args: str) -> tuple[int, str, str]:
        return _as_nobody(nobody, env, list(args))

    os.makedirs(home / "g", mode=0o700)
    os.chown(home / "g", nobody, nobody)
    gen = run("gpg", "--batch", "--passphrase", "", "--quick-gen-key", "n <n@x>",
              "future-default", "default", "never")  # fmt: skip
    assert gen[0] == 0, gen
    src = home / "src"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    (src / "secret.txt").write_text("locked")
    (src / "z.txt").write_text("after")
    for p in (src, src / "ok.txt", src / "secret.txt", src / "z.txt"):
        os.chown(p, nobody, nobody)
    os.chmod(src / "secret.txt", 0)
    repo = str(home / "repo")
    init = run("blanket", "init", "--repo", repo, "--key", "n@x")
    assert init[0] == 0, init
    code, out, err = run("blanket", "backup", "--repo", repo, str(src))
    assert code == 3, (code, out, err)
    assert "secret.txt" in err and "ok.txt" not in err
    assert "pass complete" in out  # the clock still went round
    os.chmod(src / "secret.txt", 0o644)
    code, out, err = run("blanket", "backup", "--repo", repo, str(src))
    assert code == 0, (code, out, err)
    target = home / "out"
    code, out, err = run("blanket", "restore", "--repo", repo, "--to", str(target))
    assert code == 0, (code, out, err)
    assert (target / "secret.txt").read_text() == "locked"
    assert (target / "z.txt").read_text() == "after"


def test_a_damaged_local_cache_is_fetched_again_from_the_store(
    cli: Any, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    source = _make_tree(src, files=5, size=1000)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    cli("backup", "--repo", repo, str(src), check=0)
    for cached in (tmp_path / "state").glob("*/index/*"):
        cached.write_bytes(b"garbage")
    (next((tmp_path / "state").glob("*/state.json"))).write_text("{not json")
    out = tmp_path / "out"
    cli("restore", "--repo", repo, "--to", str(out), check=0)
    assert _files(out) == source


def test_two_overlapping_runs_the_second_exits_11_and_nothing_breaks(
    cli: Any, keyring: Any, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    source = _make_tree(src, files=120, size=150_000)
    repo = str(tmp_path / "repo")
    cli("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    env = _env(keyring, tmp_path)
    # ~18 MB at 2 MB/s: the first run is still going while the other two try (on a
    # tmpfs an unthrottled run could finish before the third started)
    first = _start(
        ["backup", "--repo", repo, "--pack-size", "256K", "--limit-upload", "2M", str(src)], env
    )
    _wait_for_commits(repo, 1, first)
    second = cli("backup", "--repo", repo, str(src))
    assert second.code == 11, second
    assert "pid" in second.err and len(second.err.strip().splitlines()) == 1
    # the same from "another machine": its own local state, so only the store lease stops it
    other = cli("backup", "--repo", repo, str(src), env={"BLANKET_STATE_DIR": str(tmp_path / "b")})
    assert first.poll() is None, "the first run ended too soon to overlap"
    assert other.code == 11, other
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    out = tmp_path / "out"
    cli("restore", "--repo", repo, "--to", str(out), check=0)
    assert _files(out) == source
