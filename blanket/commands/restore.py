"""``blanket restore``: all or some of the tree, as of a layer or a time, into a folder
or, with ``--to -``, as a tar stream on stdout."""

from __future__ import annotations

import argparse
import sys

from blanket import model
from blanket.commands.common import at, open_repo, repo_urls
from blanket.errors import EXIT_OK, EXIT_PARTIAL, UsageError
from blanket.ui import Output, path_text
from blanket.units import human_size

HELP = "restore all or some of the tree (--to - writes a tar stream to stdout)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--to", required=True, help="directory to restore into, or - for a tar stream")
    p.add_argument("--at", help="layer number or ISO time")
    p.add_argument("--force", action="store_true", help="allow restoring over the source")


def run(args: argparse.Namespace, out: Output) -> int:
    from blanket.restore.run import RestoreOptions, run_restore  # not for --help or --to -

    layer, when = at(args.at)
    paths = [model.normalize_user_path(p) for p in args.paths]
    if args.to == "-":
        return _tar(args, out, paths, layer, when)
    urls = repo_urls(args)
    _one_source(args, urls)
    repos = [open_repo(args, url, reads="restore") for url in urls]
    opts = RestoreOptions(args.to, paths, layer, when, args.force)
    out.begin("restore")
    result = run_restore(repos if len(repos) > 1 else repos[0], opts, listener=out.event)
    out.summary(
        f"restored {result.files} file(s), {human_size(result.bytes_written)} into {args.to} "
        f"from {result.packs_read} pack(s) ({human_size(result.pack_bytes_read)} read); "
        f"{result.unchanged} already present"
        + (f"; {len(result.problems)} problem(s)" if result.problems else ""),
        files=result.files,
        bytes=result.bytes_written,
        packs_read=result.packs_read,
        pack_bytes_read=result.pack_bytes_read,
        unchanged=result.unchanged,
        problems=[{"path": path_text(p), "message": m} for p, m in result.problems],
    )
    return EXIT_PARTIAL if result.problems else EXIT_OK


def _one_source(args: argparse.Namespace, urls: list[str]) -> None:
    """Repositories from a profile mesh only when they back up one source."""
    chosen = getattr(args, "_profile", None)
    if args.repo or chosen is None:
        return
    sources = {t.source for t in chosen.targets if t.repository in urls}
    if len(sources) > 1:
        raise UsageError(
            f"profile {chosen.name} backs up {len(sources)} sources; "
            "pick the repository to restore from with --repo URL"
        )


def _tar(
    args: argparse.Namespace, out: Output, paths: list[bytes], layer: int | None, when: int | None
) -> int:
    from blanket.restore.dump import write_tar

    out.data_on_stdout()
    if sys.stdout.isatty():
        raise UsageError("--to - writes a tar stream; redirect it (> backup.tar, | tar -x)")
    if len(repo_urls(args)) > 1:
        raise UsageError("--to - reads one repository; pick one with --repo URL")
    repo = open_repo(args, reads="restore")
    out.begin("restore")
    result = write_tar(repo, paths, layer, when, sys.stdout.buffer, listener=out.event)
    sys.stdout.buffer.flush()
    out.summary(
        f"wrote {result.files} file(s), {human_size(result.size)} as a tar stream "
        f"({result.entries} entries)"
        + (f"; {len(result.problems)} problem(s)" if result.problems else ""),
        files=result.files,
        bytes=result.size,
        entries=result.entries,
        problems=[{"path": path_text(p), "message": m} for p, m in result.problems],
    )
    return EXIT_PARTIAL if result.problems else EXIT_OK
