"""The ``blanket`` command: parse arguments, call the core, render, exit with the contract's
code (0 ok, 1 fatal, 2 usage, 3 some files not backed up or restored, 10 repository
missing, 11 locked, 12 wrong key)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from blanket import model
from blanket.backends import open_backend
from blanket.backup import BackupOptions, run_backup
from blanket.crypto import PUBKEY, SYMMETRIC, KeySpec, read_passphrase_file
from blanket.errors import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BlanketError, UsageError
from blanket.layers import summarize
from blanket.merge import replay
from blanket.repo import Repository, init_repository
from blanket.restore.plan import select
from blanket.restore.run import RestoreOptions, run_restore
from blanket.ui import Output, path_text
from blanket.units import human_size, parse_at, parse_duration, parse_size, show_time


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _common() -> _Parser:
    p = _Parser(add_help=False)
    p.add_argument("--repo", "-r", action="append", help="repository URL (or BLANKET_REPO)")
    p.add_argument("--gnupghome", help="gpg home directory holding the key (or GNUPGHOME)")
    p.add_argument("--passphrase-file", help="file whose first line is the passphrase")
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(prog="blanket", description="Backups restorable from the first commit.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("init", parents=[common], help="create a repository")
    p.add_argument("--key", help="fingerprint (or user id) of the gpg key to encrypt and sign with")

    p = sub.add_parser("backup", parents=[common], help="continue the file clock from its pointer")
    p.add_argument("source", help="the directory to back up")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN")
    p.add_argument("--pack-size", default="32M", help="seal a pack at this size (default 32M)")
    p.add_argument("--pack-time", default="60s", help="seal a pack after this long (default 60s)")
    p.add_argument("--max-time", help="stop (committing what is done) after this long")
    p.add_argument("--max-bytes", help="stop (committing what is done) after reading this much")
    p.add_argument("--if-older-than", help="do nothing if the last commit is newer than this")

    p = sub.add_parser("layers", parents=[common], help="list the layers")

    p = sub.add_parser("ls", parents=[common], help="list the tree as replay gives it")
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--at", help="layer number or ISO time")

    p = sub.add_parser("restore", parents=[common], help="restore all or some of the tree")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--to", required=True, help="directory to restore into")
    p.add_argument("--at", help="layer number or ISO time")
    p.add_argument("--force", action="store_true", help="allow restoring over the source")
    return parser


def _repo_url(args: argparse.Namespace) -> str:
    urls = args.repo or ([os.environ["BLANKET_REPO"]] if os.environ.get("BLANKET_REPO") else [])
    if not urls:
        raise UsageError("no repository given; pass --repo URL or set BLANKET_REPO")
    if len(urls) > 1:
        raise UsageError("this command takes one --repo")
    return str(urls[0])


def _passphrase(args: argparse.Namespace) -> str | None:
    path = args.passphrase_file or os.environ.get("BLANKET_PASSPHRASE_FILE")
    return read_passphrase_file(path) if path else None


def _open(args: argparse.Namespace) -> Repository:
    return Repository.open(open_backend(_repo_url(args)), args.gnupghome, _passphrase(args))


# --- commands -----------------------------------------------------------------------


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    passphrase = _passphrase(args)
    if bool(args.key) == bool(passphrase):
        raise UsageError("init needs exactly one of --key FINGERPRINT or --passphrase-file FILE")
    spec = KeySpec(SYMMETRIC, "", passphrase) if passphrase else KeySpec(PUBKEY, args.key)
    url = _repo_url(args)
    config = init_repository(open_backend(url), args.gnupghome, spec, now=time.time_ns())
    out.summary(
        f"created repository {config.id} at {url} ({config.mode}"
        + (f", key {config.fingerprint})" if config.fingerprint else ")"),
        repository=config.id,
        url=url,
        mode=config.mode,
        key=config.fingerprint,
    )
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    opts = BackupOptions(
        pack_size=parse_size(args.pack_size, "--pack-size"),
        pack_seconds=parse_duration(args.pack_time, "--pack-time"),
        excludes=list(args.exclude),
        max_seconds=parse_duration(args.max_time, "--max-time") if args.max_time else None,
        max_bytes=parse_size(args.max_bytes, "--max-bytes") if args.max_bytes else None,
    )
    older = parse_duration(args.if_older_than, "--if-older-than") if args.if_older_than else None
    from blanket.exclude import check_patterns

    check_patterns(opts.excludes)
    repo = _open(args)
    if older is not None:
        repo.refresh()
        if repo.headers and time.time_ns() - repo.headers[-1].created < older * 1e9:
            out.summary("last commit is recent; nothing to do", skipped=True)
            return EXIT_OK
    stop = threading.Event()
    with _graceful(stop):
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


class _graceful:
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


def cmd_layers(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    repo.refresh()
    rows = [
        {
            "layer": s.layer,
            "state": "complete" if s.complete else "partial",
            "kind": "full" if s.full else "incremental",
            "first": show_time(s.first),
            "last": show_time(s.last),
            "packs": s.packs,
            "bytes": s.size if out.json else human_size(s.size),
            "clock": "(end)" if s.complete else path_text(s.clock),
        }
        for s in summarize(repo.headers)
    ]
    out.table(rows, ["layer", "state", "kind", "first", "last", "packs", "bytes", "clock"])
    if not rows:
        out.line("no layers yet: run 'blanket backup'")
    return EXIT_OK


def _at(text: str | None) -> tuple[int | None, int | None]:
    return parse_at(text) if text else (None, None)


def cmd_ls(args: argparse.Namespace, out: Output) -> int:
    repo = _open(args)
    repo.refresh()
    layer, when = _at(args.at)
    top = model.normalize_user_path(args.path)
    found = False
    for item in select(replay(repo.layer_streams(up_to_layer=layer), at=when), [top]):
        e = item.entry
        if not model.is_within(e.path, top):
            continue
        found = True
        if out.json:
            out.emit(
                "entry",
                path=path_text(e.path),
                kind=e.kind,
                mode=f"{e.mode:04o}",
                size=e.size,
                mtime_ns=e.mtime_ns,
                since=e.since,
                layer=item.layer,
            )
        else:
            out.line(
                f"{e.kind} {e.mode:04o} {e.size:>12} {show_time(e.mtime_ns)}  {path_text(e.path)}"
            )
    if not found and top != model.ROOT:
        raise UsageError(f"{args.path} is not in the backup at that point")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    layer, when = _at(args.at)
    paths = [model.normalize_user_path(p) for p in args.paths]
    repo = _open(args)
    opts = RestoreOptions(args.to, paths, layer, when, args.force)
    result = run_restore(repo, opts, listener=out.event)
    out.summary(
        f"restored {result.files} file(s), {human_size(result.bytes_written)} into {args.to} "
        f"from {result.packs_read} pack(s); {result.unchanged} already present"
        + (f"; {len(result.problems)} problem(s)" if result.problems else ""),
        files=result.files,
        bytes=result.bytes_written,
        packs_read=result.packs_read,
        unchanged=result.unchanged,
        problems=[{"path": path_text(p), "message": m} for p, m in result.problems],
    )
    return EXIT_PARTIAL if result.problems else EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "init": cmd_init,
    "backup": cmd_backup,
    "layers": cmd_layers,
    "ls": cmd_ls,
    "restore": cmd_restore,
}


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    out = Output(json_mode="--json" in raw, quiet="--quiet" in raw or "-q" in raw)
    try:
        args = build_parser().parse_args(raw)
        if args.gnupghome is None:
            args.gnupghome = os.environ.get("GNUPGHOME") or None
        out = Output(json_mode=args.json, quiet=args.quiet)
        return COMMANDS[args.command](args, out)
    except BlanketError as exc:
        out.error(str(exc), exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        out.error("interrupted", 130)
        return 130
    except SystemExit as exc:  # --help
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    finally:
        out.stop_live()


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
