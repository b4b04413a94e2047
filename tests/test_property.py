"""A stateful property test: random edits of a small real tree, interleaved with backups;
after every backup, restoring the latest state gives the tree as it is, and restoring
``at_layer=k`` gives the tree as it was when layer ``k`` was written.

Real parts only: the real gpg (session keyring), a real local repository, real files.

About edits: change detection is stat-based (size, mtime_ns, ctime_ns, inode), as in
every practical backup tool. An edit that keeps the size and lands within the same
timestamp tick as the version already recorded cannot be told apart from "unchanged" by
stat alone, and no stat-based tool promises to see it. So the model edits files the way
real programs do: new content *and* a new, distinct mtime (``os.utime(ns=...)``), and
this test does not claim the impossible guarantee.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from treeutil import assert_same_tree, link_groups, snapshot

from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import PUBKEY, KeySpec
from blanket.repo import Repository, init_repository
from blanket.restore.run import RestoreOptions, run_restore

# Names chosen to stress the clock order (a/b < a-b < a.b per component), bytes below
# "/" (space, "!"), and non-UTF-8.
NAMES = [b"a", b"b", b"a-b", b"a.b", b"a b", b"a!", b"\xff", b"zz"]
LINK_TARGETS = [b"a", b"../a", b"/abs/elsewhere", b"\xff", b"a/b", b"."]
MODES = [0o600, 0o644, 0o755, 0o4755, 0o2750, 0o1777, 0o700]
OPS = [
    "create_file",
    "create_file",
    "make_dir",
    "make_symlink",
    "hard_link",
    "hard_link",
    "modify_file",
    "modify_file",
    "chmod",
    "chmod",
    "delete_file",
    "delete_dir",
    "rename",
    "file_to_dir",
    "dir_to_file",
]


class BackupMachine(RuleBasedStateMachine):
    home = ""  # gpg home with the repository key (set by the test)
    fingerprint = ""
    workdir = ""  # where examples create their trees and repositories

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="ex-", dir=self.workdir)
        self.src = os.path.join(self.tmp, "src").encode()
        os.mkdir(self.src)
        self.url = os.path.join(self.tmp, "repo")
        init_repository(open_backend(self.url), self.home, KeySpec(PUBKEY, self.fingerprint), now=1)
        self.repo = Repository.open(open_backend(self.url), self.home)
        self.layers: dict[int, tuple[dict, set]] = {}  # layer -> (snapshot, link groups)
        self.tick = 1_650_000_000_000_000_000
        self.restores = 0
        self.busy = False  # True while a step runs: a step that raised leaves it set

    def teardown(self) -> None:
        try:
            if not self.busy:  # every example ends with a checked backup
                self.backup()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # --- the tree as it is ------------------------------------------------------------

    def _all(self) -> list[tuple[bytes, os.stat_result]]:
        out = []
        for rel in snapshot(self.src, with_root=False):
            out.append((rel, os.lstat(self._abs(rel))))
        return sorted(out)

    def _abs(self, rel: bytes) -> bytes:
        return self.src if rel == b"." else self.src + b"/" + rel

    def _files(self) -> list[bytes]:
        return [p for p, s in self._all() if stat.S_ISREG(s.st_mode)]

    def _dirs(self, *, root: bool) -> list[bytes]:
        dirs = [p for p, s in self._all() if stat.S_ISDIR(s.st_mode)]
        return ([b"."] if root else []) + dirs

    def _new_path(self, data: st.DataObject) -> bytes | None:
        parent = data.draw(st.sampled_from(self._dirs(root=True)), label="parent")
        name = data.draw(st.sampled_from(NAMES), label="name")
        rel = name if parent == b"." else parent + b"/" + name
        if os.path.lexists(self._abs(rel)):
            return None
        return rel

    def _write(self, rel: bytes, content: bytes) -> None:
        """A real edit: new content and a distinct new mtime (see the module docstring)."""
        with open(self._abs(rel), "wb") as f:
            f.write(content)
        self.tick += 1_000_000_007
        os.utime(self._abs(rel), ns=(self.tick, self.tick))

    # --- edits --------------------------------------------------------------------------

    def create_file(self, data: st.DataObject) -> None:
        rel = self._new_path(data)
        if rel is not None:
            self._write(rel, data.draw(st.binary(max_size=40), label="content"))

    def make_dir(self, data: st.DataObject) -> None:
        rel = self._new_path(data)
        if rel is not None:
            os.mkdir(self._abs(rel))

    def make_symlink(self, data: st.DataObject) -> None:
        rel = self._new_path(data)
        if rel is not None:
            os.symlink(data.draw(st.sampled_from(LINK_TARGETS), label="target"), self._abs(rel))

    def hard_link(self, data: st.DataObject) -> None:
        files = self._files()
        rel = self._new_path(data)
        if files and rel is not None:
            os.link(self._abs(data.draw(st.sampled_from(files), label="file")), self._abs(rel))

    def modify_file(self, data: st.DataObject) -> None:
        files = self._files()
        if files:
            rel = data.draw(st.sampled_from(files), label="file")
            self._write(rel, data.draw(st.binary(max_size=40), label="content"))

    def chmod(self, data: st.DataObject) -> None:
        paths = [p for p, s in self._all() if not stat.S_ISLNK(s.st_mode)]
        if paths:
            rel = data.draw(st.sampled_from(paths), label="path")
            os.chmod(self._abs(rel), data.draw(st.sampled_from(MODES), label="mode"))

    def delete_file(self, data: st.DataObject) -> None:
        paths = [p for p, s in self._all() if not stat.S_ISDIR(s.st_mode)]
        if paths:
            os.unlink(self._abs(data.draw(st.sampled_from(paths), label="path")))

    def delete_dir(self, data: st.DataObject) -> None:
        dirs = self._dirs(root=False)
        if dirs:
            shutil.rmtree(self._abs(data.draw(st.sampled_from(dirs), label="dir")))

    def rename(self, data: st.DataObject) -> None:
        paths = [p for p, _ in self._all()]
        if not paths:
            return
        old = data.draw(st.sampled_from(paths), label="old")
        new = self._new_path(data)
        if new is None or new == old or new.startswith(old + b"/"):
            return
        os.rename(self._abs(old), self._abs(new))

    def file_to_dir(self, data: st.DataObject) -> None:
        files = self._files()
        if files:
            rel = data.draw(st.sampled_from(files), label="file")
            os.unlink(self._abs(rel))
            os.mkdir(self._abs(rel))
            if data.draw(st.booleans(), label="with child"):
                self._write(rel + b"/" + data.draw(st.sampled_from(NAMES)), b"child")

    def dir_to_file(self, data: st.DataObject) -> None:
        dirs = self._dirs(root=False)
        if dirs:
            rel = data.draw(st.sampled_from(dirs), label="dir")
            shutil.rmtree(self._abs(rel))
            self._write(rel, data.draw(st.binary(max_size=40), label="content"))

    @initialize(data=st.data())
    def populate(self, data: st.DataObject) -> None:
        self.busy = True
        for _ in range(data.draw(st.integers(0, 8), label="initial entries")):
            op = data.draw(st.sampled_from(["create_file", "make_dir", "make_symlink"]))
            getattr(self, op)(data)
        self.busy = False

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """Edit the tree (2-6 edits) or back it up. One rule, so that hypothesis's swarm
        testing cannot switch either off for a whole example."""
        if data.draw(st.sampled_from(["edit", "edit", "backup"]), label="step") == "backup":
            self.backup()
            return
        self.busy = True
        for _ in range(data.draw(st.integers(2, 6), label="edits")):
            getattr(self, data.draw(st.sampled_from(OPS), label="op"))(data)
        self.busy = False

    # --- backup and check ---------------------------------------------------------------

    def _restore(self, at_layer: int | None) -> tuple[dict, set]:
        self.restores += 1
        target = os.path.join(self.tmp, f"out-{self.restores}")
        fresh = Repository.open(open_backend(self.url), self.home)
        result = run_restore(fresh, RestoreOptions(target, [], at_layer, None))
        assert result.problems == [], result.problems
        got = snapshot(target), link_groups(target)
        shutil.rmtree(target)
        return got

    def backup(self) -> None:
        self.busy = True
        expected = snapshot(self.src), link_groups(self.src)
        result = run_backup(self.repo, self.src.decode("utf-8", "surrogateescape"), BackupOptions())
        assert result.warnings == [], result.warnings
        assert result.complete
        assert (snapshot(self.src), link_groups(self.src)) == expected, "backup changed the source"
        if result.packs:
            assert result.layer not in self.layers
            self.layers[result.layer] = expected
        else:  # nothing committed: nothing may have changed since the last layer
            assert self.layers, "the first backup must commit"
            assert self.layers[max(self.layers)] == expected, "changes were not committed"

        snap, groups = self._restore(None)
        assert_same_tree(expected[0], snap, "restore of the latest state")
        assert groups == expected[1]
        for layer, (want_snap, want_groups) in sorted(self.layers.items())[:-1]:
            snap, groups = self._restore(layer)
            assert_same_tree(want_snap, snap, f"restore at_layer={layer}")
            assert groups == want_groups, f"hard-link groups at_layer={layer}"
        self.busy = False


def test_random_edits_and_backups_restore_exactly(keyring, tmp_path: Path) -> None:
    BackupMachine.home = keyring.home
    BackupMachine.fingerprint = keyring.fingerprint
    BackupMachine.workdir = str(tmp_path)
    run_state_machine_as_test(
        BackupMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=12,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
