"""``blanket backup``: continue the file clock from its pointer.

``blanket backup --repo URL SOURCE`` backs one source up. Without SOURCE it backs up every
source of the profile in force (``--profile NAME``, else the config's default), each into
its own repository (or repositories); ``--repo`` then picks among them. Several sources
share one ``--max-time`` budget, the one whose last commit is oldest going first.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blanket import estimate
from blanket.backup import BackupOptions, BackupResult, run_backup
from blanket.commands.common import open_repo, profile, setting
from blanket.config import Target
from blanket.errors import EXIT_OK, EXIT_PARTIAL, BlanketError, UsageError
from blanket.exclude import check_patterns
from blanket.oplog import Unit
from blanket.repo import Repository
from blanket.ui import Output, path_text
from blanket.units import human_size, parse_duration, parse_size

HELP = "continue the file clock from its pointer"


def size_arg(flag: str) -> Callable[[str], int]:
    return lambda text: parse_size(text, flag)


def duration_arg(flag: str) -> Callable[[str], float]:
    return lambda text: parse_duration(text, flag)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="the folder to back up (default: the profile's)")
    p.add_argument("--exclude", action="append", dest="excludes", metavar="PATTERN")
    p.add_argument("--pack-size", type=size_arg("--pack-size"), help="seal a pack at this size")
    p.add_argument("--pack-time", type=duration_arg("--pack-time"), help="seal after this long")
    p.add_argument("--max-time", type=duration_arg("--max-time"), help="stop after this long")
    p.add_argument("--max-bytes", type=size_arg("--max-bytes"), help="stop after reading this")
    p.add_argument(
        "--if-older-than",
        type=duration_arg("--if-older-than"),
        help="do nothing if the last commit is newer than this",
    )
    p.add_argument("--limit-upload", type=size_arg("--limit-upload"), help="bytes/s, e.g. 2M")
    p.add_argument("--limit-download", type=size_arg("--limit-download"), help="bytes/s")
    p.add_argument("--prometheus-file", metavar="PATH", help="write metrics here after the run")
    p.add_argument(
        "--cap", type=size_arg("--cap"), help="keep the repository under this size (e.g. 50G)"
    )
    p.add_argument(
        "--keep-history",
        action="store_const",
        const=True,
        default=None,
        help="with --cap: copy forward the old versions that deleted layers would lose, as "
        "many as fit (downloads only the packs that hold them)",
    )


def options(args: argparse.Namespace, target: Target) -> BackupOptions:
    defaults = BackupOptions()
    opts = BackupOptions(
        pack_size=setting(args, "pack_size") or defaults.pack_size,
        pack_seconds=setting(args, "pack_time") or defaults.pack_seconds,
        excludes=target.excludes + list(args.excludes or []),
        max_seconds=setting(args, "max_time"),
        max_bytes=setting(args, "max_bytes"),
        cap=setting(args, "cap"),
        keep_history=bool(setting(args, "keep_history")),
    )
    check_patterns(opts.excludes)
    return opts


def targets(args: argparse.Namespace) -> list[Target]:
    """What to back up into where: the command line, or the profile's sources."""
    urls = list(args.repo or [])
    if args.source is not None:
        if not urls and os.environ.get("BLANKET_REPO"):
            urls = [os.environ["BLANKET_REPO"]]
        chosen = profile(args, needed=not urls)
        excludes = list(chosen.get("excludes") or []) if chosen is not None else []
        real = os.path.realpath(args.source)
        paired = {
            t.repository: t.excludes
            for t in (chosen.targets if chosen is not None else [])
            if os.path.realpath(t.source) == real
        }
        urls = urls or list(paired)
        if not urls:
            raise UsageError(
                "no repository given; pass --repo URL, set BLANKET_REPO, or pair this "
                "source with a repository in a profile of the config file"
            )
        return [Target(args.source, url, paired.get(url, excludes)) for url in urls]
    chosen = profile(args)
    if chosen is None:
        raise UsageError(
            "no source given; pass the folder to back up, or define a profile in the "
            "config file (see 'blanket config check' and examples/config.toml)"
        )
    found = [t for t in chosen.targets if not urls or t.repository in urls]
    if not found:
        raise UsageError(
            f"profile {chosen.name} has no source"
            + (" for that --repo" if urls else "")
            + "; add source = FOLDER and repository = URL to it"
        )
    return found


@dataclass
class _Job:
    target: Target
    unit: Unit
    repo: Repository | None = None


def run(args: argparse.Namespace, out: Output) -> int:
    jobs = [_Job(t, args.invocation.begin(t.repository)) for t in targets(args)]
    single = len(jobs) == 1
    started = time.monotonic()
    codes: list[int] = []
    stop = threading.Event()
    for job in jobs:  # open every repository first: the oldest goes first
        args.invocation.use(job.unit)
        try:
            keep = bool(setting(args, "keep_history")) and bool(setting(args, "cap"))
            job.repo = open_repo(
                args,
                job.target.repository,
                signs=True,
                reads="backup --keep-history" if keep else None,
            )
            job.repo.refresh()
        except BlanketError as exc:
            if single:
                raise
            codes.append(_failed(out, job, exc))
    ready = [j for j in jobs if j.repo is not None]
    ready.sort(key=lambda j: j.repo.headers[-1].created if j.repo and j.repo.headers else -1)
    with _Graceful(stop):
        for job in ready:
            if stop.is_set():
                break
            args.invocation.use(job.unit)
            try:
                codes.append(_one(args, out, job, started, stop, single))
            except BlanketError as exc:
                if single:
                    raise
                codes.append(_failed(out, job, exc))
            job.unit.ended = time.time()
    failures = [c for c in codes if c not in (EXIT_OK, EXIT_PARTIAL)]
    return failures[0] if failures else max(codes, default=EXIT_OK)


def _failed(out: Output, job: _Job, exc: BlanketError) -> int:
    message = f"{job.target.source} -> {job.target.repository}: {' '.join(str(exc).split())}"
    job.unit.exit_code, job.unit.error = exc.exit_code, message
    job.unit.ended = time.time()
    out.error(message, exc.exit_code)
    return exc.exit_code


def _one(
    args: argparse.Namespace,
    out: Output,
    job: _Job,
    started: float,
    stop: threading.Event,
    single: bool,
) -> int:
    repo, target = job.repo, job.target
    assert repo is not None
    opts = options(args, target)
    label = "" if single else f"{target.source} -> {target.repository}: "
    older = setting(args, "if_older_than")
    if (
        older is not None
        and repo.headers
        and time.time_ns() - repo.headers[-1].created < older * 1e9
    ):
        out.summary(f"{label}last commit is recent; nothing to do", skipped=True)
        return _done(job, EXIT_OK)
    if opts.max_seconds is not None:
        opts.max_seconds -= time.monotonic() - started
        if opts.max_seconds <= 0:
            out.summary(f"{label}no time left (--max-time); the next run goes on", skipped=True)
            return _done(job, EXIT_OK)
    guess = estimate.for_backup(repo, target.source, opts.excludes) if out.live else None
    out.begin(f"backup {os.path.basename(os.path.realpath(target.source)) or '/'}", guess)
    try:
        result = run_backup(repo, target.source, opts, listener=out.event, stop=stop)
    finally:
        if guess is not None:
            guess.close()
    _report(out, repo, result, label)
    return _done(job, EXIT_PARTIAL if result.warnings else EXIT_OK)


def _done(job: _Job, code: int) -> int:
    job.unit.exit_code = code
    return code


def _report(out: Output, repo: Repository, result: BackupResult, label: str) -> None:
    clock = path_text(result.pointer) if result.pointer is not None else "(start)"
    if result.complete:
        state = "pass complete"
    elif result.coverage is not None:
        state = f"clock at {clock} (about {result.coverage:.0%} of the pass)"
    else:
        state = f"clock at {clock}"
    last = repo.headers[-1] if repo.headers else None
    gc = result.gc
    cleaned = (
        f"; gc deleted layer(s) {', '.join(map(str, gc.deleted_layers))}, "
        f"{human_size(gc.bytes_freed)} freed"
        if gc is not None and gc.deleted_layers
        else ""
    )
    expiring = f"; layers below {result.expire_below} expiring" if result.expire_below else ""
    for message in gc.warnings if gc is not None else []:
        out.warning(b"gc", message)
    out.summary(
        f"{label}layer {result.layer}: committed {result.packs} pack(s), {result.files} file(s), "
        f"{human_size(result.bytes_read)} read, {result.deleted} deletion(s); {state}"
        + (f"; {len(result.warnings)} file(s) not backed up" if result.warnings else "")
        + expiring
        + cleaned,
        repository=repo.config.id,
        source=os.path.realpath(repo_source(repo) or ""),
        layer=result.layer,
        packs=result.packs,
        files=result.files,
        bytes=result.bytes_read,
        deleted=result.deleted,
        complete=result.complete,
        stopped_early=result.stopped_early,
        clock=clock,
        coverage=result.coverage,
        last_commit=last.seq if last else None,
        last_commit_time=last.created / 1e9 if last else None,
        warnings=[{"path": path_text(p), "message": m} for p, m in result.warnings],
        expire_below=result.expire_below,
        gc_deleted_layers=gc.deleted_layers if gc is not None else [],
        gc_bytes_freed=gc.bytes_freed if gc is not None else 0,
    )


def repo_source(repo: Repository) -> str | None:
    return os.fsdecode(repo.headers[-1].source_path) if repo.headers else None


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
