"""How far a backup pass has got, for the progress display (never for decisions).

Two sources, cheapest first:

* **The previous pass.** The tree that replaying the repository up to its last complete
  layer gives, summed up as its entries and file bytes plus up to ``MAX_MARKS`` marks
  (a clock key and the entries and bytes up to it). The walk's position on the clock
  (``Position`` events) then says what share of that tree lies behind it. The summary
  is cached in the state folder (``estimate.json``) and recomputed once per completed
  pass, never during a run's hot path.
* **A scan**, when there is no complete pass yet (the first backup): a background
  thread walks the rest of the tree from the clock pointer, counting entries and the
  bytes of regular files, as restic does; until it has finished the total is unknown.
"""

from __future__ import annotations

import bisect
import json
import os
import stat
import threading
from dataclasses import dataclass, field

from blanket import model
from blanket.exclude import Excluder
from blanket.indexfmt import escape, unescape
from blanket.merge import replay
from blanket.repo import Repository
from blanket.state import atomic_write
from blanket.walker import walk

MAX_MARKS = 512
CACHE = "estimate.json"


@dataclass
class Marks:
    """The replayed tree of one complete layer, summed up along the clock."""

    layer: int
    seq: int  # the commit that completed the layer (the cache's key)
    entries: int = 0
    size: int = 0  # bytes of regular files
    keys: list[bytes] = field(default_factory=list)  # clock keys, ascending
    counts: list[tuple[int, int]] = field(default_factory=list)  # entries, bytes up to key

    def fraction(self, path: bytes) -> float:
        """The share of the tree's entries at or before ``path`` on the clock."""
        i = bisect.bisect_right(self.keys, model.clock_key(path))
        done = self.counts[i - 1][0] if i else 0
        return min(done / self.entries, 1.0) if self.entries else 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "layer": self.layer,
                "seq": self.seq,
                "entries": self.entries,
                "bytes": self.size,
                "marks": [
                    [escape(k), e, b] for k, (e, b) in zip(self.keys, self.counts, strict=True)
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Marks:
        raw = json.loads(text)
        marks = cls(int(raw["layer"]), int(raw["seq"]), int(raw["entries"]), int(raw["bytes"]))
        for key, e, b in raw["marks"]:
            marks.keys.append(unescape(key))
            marks.counts.append((int(e), int(b)))
        return marks


def summarize_tree(repo: Repository, layer: int, seq: int) -> Marks:
    """Replay up to ``layer`` and sum it up (streaming; memory is the marks)."""
    marks = Marks(layer, seq)
    step = 1
    for located in replay(repo.layer_streams(up_to_layer=layer)):
        e = located.entry
        marks.entries += 1
        marks.size += e.size if e.kind == model.FILE else 0
        if marks.entries % step == 0:
            marks.keys.append(e.key)
            marks.counts.append((marks.entries, marks.size))
            if len(marks.keys) >= 2 * MAX_MARKS:  # keep every other mark, double the step
                marks.keys, marks.counts = marks.keys[1::2], marks.counts[1::2]
                step *= 2
    return marks


def previous_pass(repo: Repository) -> Marks | None:
    """The summary of the last complete layer (``repo.headers`` must be fresh), from the
    cache when it is about that layer, else computed and cached; None before any pass
    completed."""
    done = [h for h in repo.packs if h.complete]
    if not done:
        return None
    last = done[-1]
    path = repo.state.dir / CACHE
    try:
        cached = Marks.from_json(path.read_text())
        if (cached.layer, cached.seq) == (last.layer, last.seq):
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    marks = summarize_tree(repo, last.layer, last.seq)
    atomic_write(path, marks.to_json().encode())
    return marks


def resume_point(repo: Repository) -> bytes | None:
    """Where the next backup run starts on the clock (None: at the beginning)."""
    if not repo.packs or repo.packs[-1].complete:
        return None
    last = repo.packs[-1]
    pointer = last.clock_to
    progress = repo.state.load()
    if progress.scan_layer == last.layer and progress.scan_pointer:
        scanned = unescape(progress.scan_pointer)
        if model.clock_key(scanned) > model.clock_key(pointer):
            pointer = scanned
    return None if pointer == model.ROOT else pointer


class Scan(threading.Thread):
    """Count what lies after ``after`` in the tree, in the background."""

    def __init__(self, source: str, after: bytes | None, excludes: list[str]) -> None:
        super().__init__(name="blanket-scan", daemon=True)
        self.source, self.after, self.excludes = source, after, excludes
        self.entries = 0
        self.bytes = 0
        self.finished = False
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            items = walk(
                os.path.realpath(self.source),
                after=self.after,
                excluder=Excluder(self.excludes),
                on_error=lambda path, exc: None,
            )
            for item in items:
                if self.halt.is_set():
                    return
                self.entries += 1
                if stat.S_ISREG(item.st.st_mode):
                    self.bytes += item.st.st_size
        except Exception:  # an estimate is never worth failing the run over
            return
        self.finished = True


class PassEstimate:
    """What the progress display asks while a backup runs."""

    def __init__(self, marks: Marks | None = None, scan: Scan | None = None) -> None:
        self.marks, self.scan = marks, scan

    def fraction(self, position: bytes | None, bytes_done: int) -> float | None:
        """The share of the pass done, or None while unknown."""
        if self.marks is not None:
            return self.marks.fraction(position) if position is not None else None
        if self.scan is not None and self.scan.finished:
            return min(bytes_done / self.scan.bytes, 1.0) if self.scan.bytes else 1.0
        return None

    def total_bytes(self) -> tuple[int, bool] | None:
        """The bytes the rest of the pass holds and whether that number is final (scan
        only: an incremental pass reads only what changed, so its share is measured by
        position, not bytes)."""
        if self.scan is not None:
            return self.scan.bytes, self.scan.finished
        return None

    def close(self) -> None:
        if self.scan is not None:
            self.scan.halt.set()


def for_backup(repo: Repository, source: str, excludes: list[str]) -> PassEstimate:
    """The estimate for the next run (call with fresh ``repo.headers``): the previous
    pass when there is one, else a scan of what the walk has left."""
    marks = previous_pass(repo)
    if marks is not None:
        return PassEstimate(marks)
    scan = Scan(source, resume_point(repo), excludes)
    scan.start()
    return PassEstimate(scan=scan)
