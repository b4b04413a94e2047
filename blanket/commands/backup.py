"""``blanket backup``: continue the file clock from its pointer."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from typing import Any

from blanket.backup import BackupOptions, run_backup
from blanket.commands.common import open_repo
from blanket.errors import EXIT_OK, EXIT_PARTIAL
from blanket.exclude import check_patterns
from blanket.ui import Output, path_text
from blanket.units import human_size, parse_duration, parse_size

HELP = "continue the file clock from its pointer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="the directory to back up")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN")
    p.add_argument("--pack-size", default="32M", help="seal a pack at this size (default 32M)")
    p.add_argument("--pack-time", default="60s", help="seal a pack after this long (default 60s)")
    p.add_argument("--max-time", help="stop (committing what is done) after this long")
    p.add_argument("--max-bytes", help="stop (committing what is done) after reading this much")
    p.add_argument("--if-older-than", help="do nothing if the last commit is newer than this")


def options(args: argparse.Namespace) -> BackupOptions:
    opts = BackupOptions(
        pack_size=parse_size(args.pack_size, "--pack-size"),
        pack_seconds=parse_duration(args.pack_time, "--pack-time"),
        excludes=list(args.exclude),
        max_seconds=parse_duration(args.max_time, "--max-time") if args.max_time else None,
        max_bytes=parse_size(args.max_bytes, "--max-bytes") if args.max_bytes else None,
    )
    check_patterns(opts.excludes)
    return opts


def run(args: argparse.Namespace, out: Output) -> int:
    opts = options(args)
    older = parse_duration(args.if_older_than, "--if-older-than") if args.if_older_than else None
    repo = open_repo(args)
    if older is not None:
        repo.refresh()
        if repo.headers and time.time_ns() - repo.headers[-1].created < older * 1e9:
            out.summary("last commit is recent; nothing to do", skipped=True)
            return EXIT_OK
    stop = threading.Event()
    with _Graceful(stop):
        result = run_backup(repo, args.source, opts, listener=out.event, stop=stop)
    clock = path_text(result.pointer) if result.pointer is not None else "(start)"
    if result.complete:
        state = "pass complete"
    elif result.coverage is not None:
        state = f"clock at {clock} (about {result.coverage:.0%} of the pass)"
    else:
        state = f"clock at {clock}"
    out.summary(
        f"layer {result.layer}: committed {result.packs} pack(s), {result.files} file(s), "
        f"{human_size(result.bytes_read)} read, {result.deleted} deletion(s); {state}"
        + (f"; {len(result.warnings)} file(s) not backed up" if result.warnings else ""),
        layer=result.layer,
        packs=result.packs,
        files=result.files,
        bytes=result.bytes_read,
        deleted=result.deleted,
        complete=result.complete,
        stopped_early=result.stopped_early,
        clock=clock,
        coverage=result.coverage,
        warnings=[{"path": path_text(p), "message": m} for p, m in result.warnings],
    )
    return EXIT_PARTIAL if result.warnings else EXIT_OK


class _Graceful:
    """SIGINT/SIGTERM ask the run to stop after committing; a second one interrupts."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.stop.is_set():
                raise KeyboardInterrupt
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
