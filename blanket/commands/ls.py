"""``blanket ls``: the tree as replay gives it."""

from __future__ import annotations

import argparse

from blanket import model
from blanket.commands.common import at, open_repo
from blanket.errors import EXIT_OK, UsageError
from blanket.restore.plan import select
from blanket.ui import Output, path_text
from blanket.units import human_size, show_time

HELP = "list the tree as replay gives it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".")
    p.add_argument("--at", help="layer number or ISO time")


def run(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    repo.refresh()
    layer, when = at(args.at)
    top = model.normalize_user_path(args.path)
    found = False
    for item in select(repo.tree(layer=layer, when=when, within=[top]), [top]):
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
            when_text = show_time(e.mtime_ns)
            size = human_size(e.size) if e.kind == model.FILE else "-"
            out.line(f"{e.kind} {e.mode:04o} {size:>10} {when_text}  {path_text(e.path)}")
    if not found and top != model.ROOT:
        raise UsageError(f"{args.path} is not in the backup at that point")
    return EXIT_OK
