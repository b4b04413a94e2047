"""Terminal and JSON rendering of events and results (the only module that imports rich).

Three modes: plain text (a summary at the end; per-file warnings to stderr), ``--quiet``
(nothing but warnings and errors), ``--json`` (one JSON object per line, each with a
``type``). On an interactive terminal a rich progress display on stderr shows files and
bytes done, the rate, the share of the pass and the time left when an estimate is known,
and the file being read when it is a large one (a heartbeat). The display is redrawn at
most ten times a second whatever the rate of events; ``--json`` gets a ``progress``
line at most once a second.

Commands whose stdout carries data (``cat``, ``restore --to -``) call ``data_on_stdout``:
everything else, JSON lines included, then goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TextIO, cast

from blanket.events import (
    Event,
    FileRestored,
    FileStored,
    ObjectDone,
    PackCommitted,
    Planned,
    Position,
    Reading,
    RestoreProblem,
    SourceWarning,
)
from blanket.units import human_size

DRAW_EVERY = 0.1  # seconds: at most ten redraws a second
JSON_EVERY = 1.0
RATE_WINDOW = 10.0  # seconds of history behind the shown rate


def _text(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def path_text(path: bytes) -> str:
    return _text(path)


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Estimate(Protocol):
    """How far a task is (``blanket.estimate.PassEstimate`` for backups)."""

    def fraction(self, position: bytes | None, bytes_done: int) -> float | None: ...

    def total_bytes(self) -> tuple[int, bool] | None: ...


class Recorder(Protocol):
    """Where the operation log collects a run's figures (``blanket.oplog``)."""

    def note_summary(self, fields: dict[str, Any]) -> None: ...

    def note_warning(self, path: str, message: str) -> None: ...


if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    class _Bar(Progress):
        heartbeat: str


def _new_bar(console: Console) -> _Bar:
    """The live progress display: a progress row plus a line for the large file being
    read. ``rich`` is imported here, when a terminal first needs it, not at start-up."""
    from rich.console import RenderableType
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
    from rich.text import Text

    class Bar(Progress):
        heartbeat = ""

        def get_renderables(self) -> Iterable[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            if self.heartbeat:
                yield Text(self.heartbeat, no_wrap=True, overflow="ellipsis", style="dim")

    return cast(
        "_Bar",
        Bar(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=28),
            TextColumn("{task.fields[pct]:>4}"),
            TextColumn("{task.fields[stats]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=True,
            refresh_per_second=10,
        ),
    )


class _Tally:
    """Running figures of the task being shown."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.files = 0
        self.bytes = 0
        self.packs = 0
        self.position: bytes | None = None
        self.reading: bytes | None = None  # large file being read (bytes counted per chunk)
        self.reading_done = 0
        self.reading_size = 0
        self.planned: Planned | None = None
        self.samples: deque[tuple[float, int]] = deque()
        self.first: tuple[float, float] | None = None  # (time, fraction) first seen

    def rate(self, now: float) -> float:
        self.samples.append((now, self.bytes))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.popleft()
        t0, b0 = self.samples[0]
        if now - t0 < 0.5:
            t0, b0 = self.started, 0
        return (self.bytes - b0) / max(now - t0, 1e-3)

    def fraction(self, estimate: Estimate | None) -> float | None:
        if self.planned is not None and self.planned.bytes:
            return min(self.bytes / self.planned.bytes, 1.0)
        if estimate is None:
            return None
        return estimate.fraction(self.position, self.bytes)

    def eta(self, now: float, fraction: float | None) -> float | None:
        if fraction is None:
            return None
        if self.first is None:
            self.first = (now, fraction)
            return None
        t0, f0 = self.first
        if fraction <= f0 or now - t0 < 1.0:
            return None
        return (1.0 - fraction) * (now - t0) / (fraction - f0)


class Output:
    """Where a command's events, tables and summary go."""

    def __init__(
        self,
        *,
        json_mode: bool = False,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.json = json_mode
        self.clock = clock  # when to draw and the rates: the monotonic clock (tests: a count)
        self.draws = 0  # how often the progress display was drawn
        self.quiet = quiet
        self.stream: TextIO = sys.stdout
        self._err: Console | None = None
        self.live = not json_mode and not quiet and sys.stderr.isatty()
        self.record: Recorder | None = None
        self.estimate: Estimate | None = None
        self.task = ""
        self._bar: _Bar | None = None
        self._tally = _Tally(self.clock())
        self._drawn = 0.0
        self._json_at = 0.0

    @property
    def err(self) -> Console:
        """A ``rich`` console on stderr (made when first needed)."""
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    @err.setter
    def err(self, console: Console) -> None:
        self._err = console

    def data_on_stdout(self) -> None:
        """stdout carries data: send every line of ours to stderr instead."""
        self.stream = sys.stderr

    def begin(self, task: str, estimate: Estimate | None = None) -> None:
        """Start showing a new task (a backup of one source, a restore)."""
        self.stop_live()
        self.task, self.estimate = task, estimate
        self._tally = _Tally(self.clock())

    # --- events ----------------------------------------------------------------------

    def event(self, ev: Event) -> None:
        t = self._tally
        if isinstance(ev, (SourceWarning, RestoreProblem)):
            self.warning(ev.path, ev.message)
            return
        if isinstance(ev, (FileStored, FileRestored)):
            t.files += 1
            if ev.path == t.reading:  # its bytes were counted chunk by chunk
                t.reading = None
            else:
                t.bytes += ev.size
        elif isinstance(ev, Reading):
            if ev.path != t.reading:
                t.reading, t.reading_done = ev.path, max(ev.done - (1 << 20), 0)
            t.bytes += ev.done - t.reading_done
            t.reading_done, t.reading_size = ev.done, ev.size
        elif isinstance(ev, Position):
            t.position = ev.path
        elif isinstance(ev, Planned):
            t.planned = ev
        elif isinstance(ev, ObjectDone):
            t.files += 1
            t.bytes += ev.size
        elif isinstance(ev, PackCommitted):
            t.packs += 1
            self.emit(
                "commit",
                seq=ev.seq,
                layer=ev.layer,
                entries=ev.entries,
                bytes=ev.size,
                clock=_text(ev.clock_to),
            )
        self._tick(ev)

    def _tick(self, ev: Event) -> None:
        now = self.clock()
        if self.json and now - self._json_at >= JSON_EVERY:
            self._json_at = now
            self.emit("progress", **self._figures(now))
        if self.live and (now - self._drawn >= DRAW_EVERY or isinstance(ev, PackCommitted)):
            self._drawn = now
            self._draw(now)

    def _figures(self, now: float) -> dict[str, Any]:
        t = self._tally
        fraction = t.fraction(self.estimate)
        eta = t.eta(now, fraction)
        return {
            "task": self.task,
            "files": t.files,
            "bytes": t.bytes,
            "bytes_per_second": round(t.rate(now)),
            "fraction": None if fraction is None else round(fraction, 4),
            "eta_seconds": None if eta is None else round(eta),
            "packs": t.packs,
            "path": None if t.position is None else _text(t.position),
        }

    def _draw(self, now: float) -> None:
        self.draws += 1
        f = self._figures(now)
        t = self._tally
        stats = f"{f['files']:,} files  {human_size(f['bytes'])}"
        total = self.estimate.total_bytes() if self.estimate is not None else None
        if t.planned is not None:
            stats += f" of {human_size(t.planned.bytes)}"
        elif total is not None:
            stats += f" of {'' if total[1] else '≥'}{human_size(total[0])}"
        stats += f"  {human_size(f['bytes_per_second'])}/s"
        if f["packs"]:
            stats += f"  {f['packs']} committed"
        pct = "" if f["fraction"] is None else f"{f['fraction']:.0%}"
        eta = "" if f["eta_seconds"] is None else f"ETA {human_duration(f['eta_seconds'])}"
        if self._bar is None:
            from rich.markup import escape

            self._bar = _new_bar(self.err)
            title = escape(self.task or "working")
            self._bar.add_task(title, total=None, pct="", stats="", eta="")
            self._bar.start()
        if t.reading is not None:
            self._bar.heartbeat = (
                f"  reading {_text(t.reading)}  {human_size(t.reading_done)} of "
                f"{human_size(t.reading_size)}"
            )
        elif t.position is not None:
            self._bar.heartbeat = f"  clock at {_text(t.position)}"
        completed = None if f["fraction"] is None else f["fraction"] * 1000
        self._bar.update(
            self._bar.task_ids[0],
            total=None if completed is None else 1000,
            completed=completed or 0,
            pct=pct,
            stats=stats,
            eta=eta,
        )

    def stop_live(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # --- output ----------------------------------------------------------------------

    def emit(self, event_type: str, /, **fields: Any) -> None:
        """One JSON line (``--json`` only)."""
        if self.json:
            print(json.dumps({"type": event_type, **fields}), file=self.stream, flush=True)

    def warning(self, path: bytes, message: str) -> None:
        if self.record is not None:
            self.record.note_warning(_text(path), message)
        if self.json:
            self.emit("warning", path=_text(path), message=message)
            return
        # shown even with --quiet: a run with warnings is not a plain success
        line = f"warning: {_text(path)}: {message}"
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def line(self, text: str) -> None:
        """A line of normal output (suppressed by --quiet and --json)."""
        if not self.json and not self.quiet:
            self.stop_live()
            print(text, file=self.stream)

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        if self.json:
            for row in rows:
                self.emit("row", **row)
            return
        if self.quiet:
            return
        widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns).rstrip(), file=self.stream)
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip(), file=self.stream)

    def summary(self, text: str, **fields: Any) -> None:
        self.stop_live()
        if self.record is not None:
            self.record.note_summary(fields)
        if self.json:
            self.emit("summary", **fields)
        elif not self.quiet:
            print(text, file=self.stream, flush=True)

    def error(self, message: str, code: int) -> None:
        """One line on stderr (in ``--json`` mode one JSON line instead, on the JSON
        stream, plus the plain line on stderr when that is another stream)."""
        self.stop_live()
        message = " ".join(message.split())  # an error is always one line
        self.emit("error", message=message, exit_code=code)
        if not (self.json and self.stream is sys.stderr):
            print(f"blanket: error: {message}", file=sys.stderr, flush=True)
