"""status for people and monitors, the operation log, and the Prometheus file."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from blanket import oplog
from blanket.state import state_root

pytest_plugins = ["uxutil"]
pytestmark = pytest.mark.usefixtures("no_user_config")


PROM_LINE = re.compile(r'^[a-z_]+\{([a-z_]+="[^"]*",?)*\} -?[0-9.e+-]+$')


def setup_repo(bl, keyring, tmp_path: Path) -> tuple[str, Path]:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_bytes(b"alpha\n")
    (src / "b.txt").write_bytes(b"beta\n")
    repo = str(tmp_path / "repo")
    bl("init", "--repo", repo, "--key", keyring.fingerprint, check=0)
    return repo, src


def test_status_after_backups_and_as_a_check(bl, keyring, tmp_path: Path) -> None:
    repo, src = setup_repo(bl, keyring, tmp_path)
    none = bl("status", "--repo", repo, "--crit-age", "1d")
    assert none.code == 2 and none.out.startswith("BLANKET CRITICAL - ") and "no commit" in none.out
    prom = tmp_path / "metrics" / "blanket.prom"
    prom.parent.mkdir()
    bl("backup", "--repo", repo, str(src), "--prometheus-file", str(prom), check=0)
    (src / "b.txt").write_bytes(b"beta, changed\n")
    bl("backup", "--repo", repo, str(src), check=0)

    text = bl("status", "--repo", repo, check=0).out
    assert re.search(r"last commit +\S+ \(\d+s ago\), commit 1, layer 1", text), text
    assert "layer 1 complete" in text and "2 (2 complete)" in text
    assert re.search(r"last backup .* ok, 1 file\(s\)", text), text

    ok = bl("status", "--repo", repo, "--warn-age", "6h", "--crit-age", "1d", check=0)
    first = ok.out.splitlines()[0]
    assert first.startswith(f"BLANKET OK - {repo}: last commit ")
    assert re.search(r"\| age=\d+s;21600;86400 size=\d+B;; layers=2$", first), first
    warn = bl("status", "--repo", repo, "--warn-age", "0s", "--crit-age", "1d", check=1)
    assert warn.out.startswith("BLANKET WARNING - ")
    crit = bl("status", "--repo", repo, "--crit-age", "0s", "--cap", "10", check=2)
    assert crit.out.startswith("BLANKET CRITICAL - ") and "over the cap" in crit.out
    quiet = bl("status", "--repo", repo, "--warn-age", "6h", "--quiet", check=0)
    assert quiet.out.count("\n") == 1 and quiet.out.startswith("BLANKET OK")
    missing = bl("status", "--repo", str(tmp_path / "nope"), "--crit-age", "1d", check=2)
    assert missing.out.startswith("BLANKET CRITICAL - ") and "blanket init" in missing.out
    unknown = bl("status", "--crit-age", "1d", check=3)
    assert unknown.out.startswith("BLANKET UNKNOWN - no repository given")

    js = bl("status", "--repo", repo, "--json", "--cap", "1G", check=0)
    (record,) = [json.loads(line) for line in js.out.splitlines()]
    assert record["type"] == "status" and record["layers"] == 2 and record["commits"] == 2
    assert record["cap"] == 1 << 30 and record["size"] > 0 and record["coverage"] == 1.0
    assert record["last_backup"]["outcome"] == "ok"

    lines = prom.read_text().splitlines()
    assert os.listdir(prom.parent) == ["blanket.prom"]  # written atomically, no leftovers
    samples = [line for line in lines if not line.startswith("#")]
    assert all(PROM_LINE.match(s) for s in samples), samples
    names = {s.split("{")[0] for s in samples}
    for name in (
        "blanket_last_commit_timestamp_seconds",
        "blanket_last_run_exit_code",
        "blanket_repository_bytes",
        "blanket_layers",
    ):
        assert name in names
    assert any(s.startswith("blanket_last_run_exit_code{") and s.endswith(" 0") for s in samples)


def test_unreadable_files_and_failures_reach_status(
    bl, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, src = setup_repo(bl, keyring, tmp_path)
    victim = (src / "b.txt").stat().st_ino
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:  # a bad sector, in the standard library
        if os.fstat(fd).st_ino == victim:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", pread)
    prom = tmp_path / "blanket.prom"
    broken = bl("backup", "--repo", repo, str(src), "--prometheus-file", str(prom), check=3)
    monkeypatch.setattr(os, "pread", real_pread)
    assert broken.err == "warning: b.txt: cannot read: Input/output error\n"
    assert 'blanket_last_run_exit_code{repository="' in prom.read_text()
    assert re.search(r"blanket_last_run_warnings\{.*\} 1$", prom.read_text(), re.M)

    os.rename(repo, repo + ".unplugged")
    bl("backup", "--repo", repo, str(src), check=10)
    os.rename(repo + ".unplugged", repo)

    text = bl("status", "--repo", repo, check=0).out
    assert "unreadable  1 file(s): b.txt (cannot read: Input/output error)" in text
    assert re.search(r"error +\S+ backup: no blanket repository at", text), text
    check = bl("status", "--repo", repo, "--warn-age", "1d", check=1)
    assert check.out.startswith("BLANKET WARNING - ") and "last backup failed" in check.out


def test_every_run_is_logged_locally_and_backups_in_the_store(
    bl, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, src = setup_repo(bl, keyring, tmp_path)
    bl("backup", "--repo", repo, str(src), check=0)
    bl("ls", "--repo", repo, check=0)
    bl("ls", "--repo", repo, "no/such/path", check=2)
    state = tmp_path / "state"
    (repo_dir,) = [p for p in state.iterdir() if p.is_dir()]
    records = oplog.read(repo_dir)
    assert [(r["command"], r["exit_code"], r["outcome"]) for r in records] == [
        ("backup", 0, "ok"),
        ("ls", 0, "ok"),
        ("ls", 2, "failed"),
    ]
    backup = records[0]
    assert backup["figures"]["files"] == 2 and backup["end_ts"] >= backup["start_ts"]
    assert "is not in the backup" in records[2]["error"]
    assert [r["command"] for r in oplog.read(state)] == ["init"]  # no repository yet

    (key,) = [p.name for p in (Path(repo) / "log").iterdir()]
    assert backup["stored_as"] == f"log/{key}"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", key)
    plain = subprocess.run(
        [
            "gpg",
            "--homedir",
            keyring.home,
            "--batch",
            "--quiet",
            "--decrypt",
            str(Path(repo) / "log" / key),
        ],
        capture_output=True,
        check=True,
    ).stdout
    assert json.loads(plain)["run"] == backup["run"]

    # another machine (no local state) still sees the last backup, from the store
    monkeypatch.setenv("BLANKET_STATE_DIR", str(tmp_path / "elsewhere"))
    js = bl("status", "--repo", repo, "--json", check=0)
    assert json.loads(js.out)["last_backup"]["exit_code"] == 0
    assert state_root() == tmp_path / "elsewhere"


def test_a_skipped_backup_is_logged_but_writes_nothing_to_the_store(
    bl, keyring, tmp_path: Path
) -> None:
    repo, src = setup_repo(bl, keyring, tmp_path)
    bl("backup", "--repo", repo, str(src), check=0)
    r = bl("backup", "--repo", repo, str(src), "--if-older-than", "1h", check=0)
    assert "nothing to do" in r.out
    assert len(list((Path(repo) / "log").iterdir())) == 1
    bl("backup", "--repo", repo, str(src / "b.txt"), check=2)  # refused: the store is left alone
    assert len(list((Path(repo) / "log").iterdir())) == 1
    (repo_dir,) = [p for p in (tmp_path / "state").iterdir() if p.is_dir()]
    assert [r["outcome"] for r in oplog.read(repo_dir)] == ["ok", "skipped", "failed"]


def test_the_local_log_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oplog, "MAX_LOG", 4096)
    for i in range(200):
        oplog.append(tmp_path, {"n": i, "pad": "x" * 40})
    assert (tmp_path / oplog.LOG_NAME).stat().st_size <= 4096 + 100
    kept = oplog.read(tmp_path)
    assert kept[-1]["n"] == 199 and kept[0]["n"] > 100
    assert [r["n"] for r in kept] == list(range(kept[0]["n"], 200))


def test_sync_copies_the_run_records_so_status_on_a_replica_knows_the_last_backup(
    bl, keyring, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, src = setup_repo(bl, keyring, tmp_path)
    bl("backup", "--repo", repo, str(src), check=0)
    (src / "b.txt").write_bytes(b"beta, changed\n")
    bl("backup", "--repo", repo, str(src), check=0)
    replica = str(tmp_path / "replica")
    first = json.loads(bl("sync", "--from", repo, "--to", replica, "--json", check=0).out)
    assert (first["commits_copied"], first["logs_copied"]) == (2, 2)
    assert sorted(os.listdir(Path(replica) / "log")) == sorted(os.listdir(Path(repo) / "log"))
    again = json.loads(bl("sync", "--from", repo, "--to", replica, "--json", check=0).out)
    assert (again["commits_copied"], again["logs_copied"]) == (0, 0)

    # the disk with the first store died: another machine asks the replica
    monkeypatch.setenv("BLANKET_STATE_DIR", str(tmp_path / "elsewhere"))
    last = json.loads(bl("status", "--repo", replica, "--json", check=0).out)["last_backup"]
    assert last["exit_code"] == 0
    assert (last["figures"]["layer"], last["figures"]["last_commit"]) == (1, 1)  # the second


def test_of_runs_started_in_the_same_second_the_store_names_the_last_to_end(repo) -> None:
    # keys sort by start second, then by the random run id: here the wrong way round
    base = {"command": "backup", "repository": repo.config.id, "start_ts": 1795000000.2}
    oplog.store(repo, {**base, "run": "ffffffff", "end_ts": 1795000000.5, "exit_code": 0})
    oplog.store(repo, {**base, "run": "00000000", "end_ts": 1795000000.9, "exit_code": 3})
    newest = oplog.newest_in_store(repo)
    assert newest is not None and newest["run"] == "00000000"
    oplog.store(repo, {**base, "run": "77777777", "start_ts": 1795000001.0, "end_ts": 1795000001.1})
    newest = oplog.newest_in_store(repo)
    assert newest is not None and newest["run"] == "77777777"
