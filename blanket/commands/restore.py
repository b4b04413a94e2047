"""``blanket restore``: all or some of the tree, as of a layer or a time."""

from __future__ import annotations

import argparse

from blanket import model
from blanket.commands.common import at, open_repo
from blanket.errors import EXIT_OK, EXIT_PARTIAL
from blanket.restore.run import RestoreOptions, run_restore
from blanket.ui import Output, path_text
from blanket.units import human_size

HELP = "restore all or some of the tree"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--to", required=True, help="directory to restore into")
    p.add_argument("--at", help="layer number or ISO time")
    p.add_argument("--force", action="store_true", help="allow restoring over the source")


def run(args: argparse.Namespace, out: Output) -> int:
    layer, when = at(args.at)
    paths = [model.normalize_user_path(p) for p in args.paths]
    repo = open_repo(args)
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
