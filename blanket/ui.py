"""Terminal and JSON rendering of events and results (the only module that imports rich).

Three modes: plain text (a summary at the end; per-file warnings to stderr), ``--quiet``
(nothing but warnings and errors), ``--json`` (one JSON object per line on stdout, each with a
``type``). On an interactive terminal a rich status line shows what the run is doing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from rich.console import Console

from blanket.events import (
    Event,
    FileRestored,
    FileStored,
    PackCommitted,
    RestoreProblem,
    SourceWarning,
)
from blanket.units import human_size


def _text(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


class Output:
    """Where a command's events, tables and summary go."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False)
        self.live = not json_mode and not quiet and sys.stderr.isatty()
        self._status: Any = None
        self._files = 0
        self._bytes = 0
        self._started = time.monotonic()

    # --- events ----------------------------------------------------------------------

    def event(self, ev: Event) -> None:
        if isinstance(ev, (SourceWarning, RestoreProblem)):
            self.warning(ev.path, ev.message)
        elif isinstance(ev, (FileStored, FileRestored)):
            self._files += 1
            self._bytes += ev.size
            self._tick(ev.path)
        elif isinstance(ev, PackCommitted) and self.json:
            self.emit(
                "commit",
                seq=ev.seq,
                layer=ev.layer,
                entries=ev.entries,
                bytes=ev.size,
                clock=_text(ev.clock_to),
            )

    def _tick(self, path: bytes) -> None:
        if not self.live:
            return
        rate = self._bytes / max(time.monotonic() - self._started, 1e-6)
        text = (
            f"{self._files} files, {human_size(self._bytes)} "
            f"({human_size(rate)}/s)  {_text(path)[-60:]}"
        )
        if self._status is None:
            self._status = self.err.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def stop_live(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    # --- output ----------------------------------------------------------------------

    def emit(self, event_type: str, /, **fields: Any) -> None:
        """One JSON line (``--json`` only)."""
        if self.json:
            print(json.dumps({"type": event_type, **fields}), flush=True)

    def warning(self, path: bytes, message: str) -> None:
        if self.json:
            self.emit("warning", path=_text(path), message=message)
        else:  # shown even with --quiet: a run with warnings is not a plain success
            self.stop_live()
            print(f"warning: {_text(path)}: {message}", file=sys.stderr)

    def line(self, text: str) -> None:
        """A line of normal output (suppressed by --quiet and --json)."""
        if not self.json and not self.quiet:
            self.stop_live()
            print(text)

    def table(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        if self.json:
            for row in rows:
                self.emit("row", **row)
            return
        if self.quiet:
            return
        widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
        print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
        for r in rows:
            print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())

    def summary(self, text: str, **fields: Any) -> None:
        self.stop_live()
        if self.json:
            self.emit("summary", **fields)
        elif not self.quiet:
            print(text)

    def error(self, message: str, code: int) -> None:
        self.stop_live()
        if self.json:
            self.emit("error", message=message, exit_code=code)
        print(f"blanket: error: {message}", file=sys.stderr)


def path_text(path: bytes) -> str:
    return _text(path)
