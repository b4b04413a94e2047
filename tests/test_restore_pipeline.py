"""The restore pipeline's parts: the pack prefetcher and the worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blanket.errors import IntegrityError
from blanket.packread import Prefetcher
from blanket.restore import writer as writer_module
from blanket.restore.workers import PackWorkers


def _fetcher(tmp_path: Path, log: list[str]) -> object:
    def fetch(key: str) -> str:
        log.append(f"{key}@{threading.current_thread().name.split('_')[0]}")
        if key == "bad":
            raise IntegrityError("bad is not validly signed")
        path = tmp_path / key
        path.write_text(key)
        return str(path)

    return fetch


def test_prefetcher_fetches_ahead_in_order_and_cleans_up(tmp_path: Path) -> None:
    log: list[str] = []
    with Prefetcher(_fetcher(tmp_path, log)) as pre:  # type: ignore[arg-type]
        for key in ("a", "b", "bad", "c", "d", "e"):
            pre.want(key)
        assert Path(pre.take("a")).read_text() == "a"
        with pytest.raises(IntegrityError):
            pre.take("bad")  # "b" was named but is not taken: skipped and removed
        assert not (tmp_path / "b").exists()
        assert Path(pre.take("c")).read_text() == "c"
        assert pre.take("zzz") == str(tmp_path / "zzz")  # never named: fetched now
    order = ["a", "b", "bad", "c", "d", "e"]
    fetched = [e.split("@")[0] for e in log if not e.startswith("zzz")]
    assert fetched == sorted(fetched, key=order.index)  # in the order named ("b" may be
    assert {"a", "bad", "c"} <= set(fetched)  # cancelled before it started)
    assert all("restore-fetch" in e for e in log if not e.startswith("zzz"))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["a", "c", "zzz"]  # "d" (and "e", if fetched) removed by close


def _whoami(n: int) -> tuple[int, int, bytes]:
    if n == 13:
        raise ValueError("thirteen")
    return n, os.getpid(), writer_module._temp_name()


def test_workers_run_tasks_in_other_processes_and_report_in_order() -> None:
    done: list[tuple[int, int, bytes]] = []
    with PackWorkers(2, _whoami, done.append) as workers:
        for n in range(20, 40):
            workers.submit(n)
            assert len(done) <= n - 19
        workers.drain()
    assert [n for n, _, _ in done] == list(range(20, 40))
    pids = {pid for _, pid, _ in done}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    runs = {name.rsplit(b"-", 1)[0] for _, _, name in done}
    assert len(runs) == len(pids)  # each worker draws its own temporary names
    assert writer_module._temp_name().rsplit(b"-", 1)[0] not in runs


def test_without_processes_tasks_run_here_at_once() -> None:
    done: list[tuple[int, int, bytes]] = []
    with PackWorkers(0, _whoami, done.append) as workers:
        workers.submit(1)
        assert [(n, pid) for n, pid, _ in done] == [(1, os.getpid())]


@pytest.mark.parametrize("processes", [0, 2])
def test_a_task_that_raises_raises_for_the_caller(processes: int) -> None:
    done: list[tuple[int, int, bytes]] = []
    with (
        pytest.raises(ValueError, match="thirteen"),
        PackWorkers(processes, _whoami, done.append) as workers,
    ):
        for n in range(10, 20):
            workers.submit(n)
        workers.drain()
    assert [n for n, _, _ in done] == [10, 11, 12]


def _slow_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_ctrl_c_is_left_to_the_caller_and_the_pack_in_hand_finishes() -> None:
    done: list[int] = []
    with PackWorkers(1, _slow_pid, done.append) as workers:
        workers.submit(0.0)
        workers.drain()
        (pid,) = done
        workers.submit(1.0)
        time.sleep(0.3)
        os.kill(pid, signal.SIGINT)  # as Ctrl-C sends it to the whole process group
        workers.drain()
    assert done == [pid, pid]


_ORPHAN_SCRIPT = """
import os, signal, sys, time
from blanket.restore.workers import PackWorkers
def pid(_):
    return os.getpid()
seen = []
workers = PackWorkers(2, pid, seen.append)
for n in range(8):
    workers.submit(n)
workers.drain()
workers.submit(0)
print(" ".join(str(p) for p in set(seen)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_die_with_a_killed_restore() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)]
