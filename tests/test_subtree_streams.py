"""A subtree's replay reads only the packs whose clock range can hold it (or an ancestor),
and gives exactly what the replay of every pack gives for that subtree."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from blanket import model
from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.merge import replay
from blanket.reach import may_hold, reach_of
from blanket.repo import Repository
from blanket.restore.plan import select

NAMES = ["a", "a-b", "a.b", "b", "b0", "c d", "z"]


def _edit(root: Path, rnd: random.Random) -> None:
    for _ in range(rnd.randrange(3, 9)):
        depth = rnd.randrange(1, 4)
        path = root.joinpath(*(rnd.choice(NAMES) for _ in range(depth)))
        what = rnd.random()
        if what < 0.55:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(rnd.randrange(0, 300)))
            except (NotADirectoryError, FileExistsError, IsADirectoryError):
                continue  # a file where a folder would go, or the reverse
        elif what < 0.8 and path.is_dir():
            shutil.rmtree(path)
        elif what < 0.8 and path.exists():
            path.unlink()
        elif path.is_file():
            path.write_bytes(b"changed " + os.urandom(8))


def _all_paths(repo: Repository) -> set[bytes]:
    paths = set()
    for h in repo.headers:
        for e in repo.entries(h.seq):
            p = e.path
            paths.add(p)
            while p != model.ROOT:
                p = model.parent_of(p)
                paths.add(p)
    return paths


def test_the_packs_a_subtree_reads_replay_to_the_same_subtree(
    repo: Repository, repo_url: str, keyring: object, tmp_path: Path
) -> None:
    rnd = random.Random(5)
    src = tmp_path / "src"
    src.mkdir()
    for _ in range(10):
        _edit(src, rnd)
    opts = BackupOptions(pack_entries=3)
    for _ in range(5):
        run_backup(repo, str(src), opts)
        _edit(src, rnd)
    fresh = Repository.open(open_backend(repo_url), keyring.home)  # type: ignore[attr-defined]
    fresh.refresh()
    assert len(fresh.headers) > 12 and len({h.layer for h in fresh.headers}) >= 5
    layers = sorted({h.layer for h in fresh.headers})
    left_out = 0
    tops = sorted(_all_paths(fresh), key=model.clock_key) + [b"nothing/here"]
    for top in tops:
        for layer in [None, *layers]:
            every = list(select(replay(fresh.layer_streams(up_to_layer=layer)), [top]))
            streams = fresh.layer_streams(up_to_layer=layer, within=[top])
            assert list(select(replay(streams), [top])) == every, (top, layer)
        left_out += sum(not may_hold(h, reach_of([top])) for h in fresh.headers)
    assert left_out > len(tops) * len(fresh.headers) // 3  # the filter does leave packs out
