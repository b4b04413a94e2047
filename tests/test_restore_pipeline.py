"""The restore pipeline's parts: the pack prefetcher and the small-file writer pool."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from blanket import model
from blanket.errors import IntegrityError
from blanket.model import Entry
from blanket.restore.fetch import Prefetcher
from blanket.restore.pool import BATCH_FILES, WriterPool
from blanket.restore.writer import ContentMismatch, SafeWriter


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


def _file(path: bytes, content: bytes, *, sha: str | None = None) -> Entry:
    digest = hashlib.sha256(content).hexdigest() if sha is None else sha
    return Entry(model.FILE, path, mode=0o640, size=len(content), sha256=digest, mtime_ns=10**18)


def test_pool_writes_through_the_safe_writer_and_reports_in_order(tmp_path: Path) -> None:
    target = tmp_path / "t"
    (tmp_path / "outside").mkdir()
    (target / "d").mkdir(parents=True)
    (target / "link").symlink_to(tmp_path / "outside")
    files = [(b"d/f%03d" % i, b"content %d" % i) for i in range(3 * BATCH_FILES + 5)]
    entries = [_file(p, c) for p, c in files]
    entries[7] = _file(files[7][0], files[7][1], sha="0" * 64)  # lies about its content
    entries[9] = _file(b"link/escape", b"nope")  # through a symlink: refused
    done: list[tuple[int, bytes, str]] = []
    with SafeWriter(str(target)) as writer:
        pool: WriterPool[int] = WriterPool(
            writer,
            2,
            lambda tag, e, err, _w: done.append((tag, e.path, type(err).__name__)),
        )
        try:
            for i, e in enumerate(entries):
                pool.submit(i, e, files[i][1] if i != 9 else b"nope")
            pool.drain()
        finally:
            pool.close()
    assert [tag for tag, _, _ in done] == list(range(len(entries)))
    assert done[7][2] == ContentMismatch.__name__
    assert done[9][2] == "UnsafePath"
    assert not list((tmp_path / "outside").iterdir())
    for i, (path, content) in enumerate(files):
        if i not in (7, 9):
            assert (target / path.decode()).read_bytes() == content
            assert (target / path.decode()).stat().st_mode & 0o777 == 0o640
    assert not (target / files[7][0].decode()).exists()
    assert not [p for p in target.rglob("*") if p.name.startswith(".blanket-tmp")]
