"""``blanket diff`` (or ``changes``): what was added, changed and deleted between two
points of the history: ``--from`` and ``--to`` each take a layer number (the state once
that layer's packs are replayed) or an ISO time; by default, what the latest layer
changed."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator

from blanket import model
from blanket.commands.common import at, open_repo
from blanket.diff import Change, Tally, compare
from blanket.errors import EXIT_OK, UsageError
from blanket.merge import Located
from blanket.repo import Repository
from blanket.ui import Output, path_text
from blanket.units import human_size

HELP = "list what was added, changed and deleted between two points"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default=".", help="only below this path")
    p.add_argument(
        "--from",
        dest="since",
        metavar="WHEN",
        help="layer number or ISO time (default: the layer before the latest)",
    )
    p.add_argument(
        "--to",
        dest="until",
        metavar="WHEN",
        help="layer number or ISO time (default: the latest state)",
    )


def tree(
    repo: Repository, text: str | None, default_layer: int | None, top: bytes = model.ROOT
) -> Iterable[Located]:
    """The replayed tree at a point: ``text`` (``--at`` syntax), else ``default_layer``
    (None: the latest state; below 0: empty); only what ``top`` needs is read."""
    layer, when = at(text) if text else (default_layer, None)
    if layer is not None and layer < 0:
        return iter(())
    return repo.tree(layer=layer, when=when, within=[top])


def _within(items: Iterable[Located], top: bytes) -> Iterator[Located]:
    return (i for i in items if model.is_within(i.entry.path, top))


def run(args: argparse.Namespace, out: Output) -> int:
    top = model.normalize_user_path(args.path)
    repo = open_repo(args)
    repo.refresh()
    if not repo.headers:
        raise UsageError("the repository has no commit yet; run 'blanket backup' first")
    latest = repo.packs[-1].layer
    old = tree(repo, args.since, latest - 1, top)
    new = tree(repo, args.until, None, top)
    tally = Tally()
    for change in compare(_within(old, top), _within(new, top)):
        tally.count(change)
        _show(out, change)
    since = args.since if args.since is not None else f"layer {latest - 1}"
    until = args.until if args.until is not None else "latest"
    out.summary(
        f"from {since} to {until}: {tally.added} added, {tally.changed} changed, "
        f"{tally.deleted} deleted; {human_size(tally.bytes_added)} in, "
        f"{human_size(tally.bytes_removed)} out",
        since=since,
        until=until,
        added=tally.added,
        changed=tally.changed,
        deleted=tally.deleted,
        bytes_added=tally.bytes_added,
        bytes_removed=tally.bytes_removed,
    )
    return EXIT_OK


def _show(out: Output, c: Change) -> None:
    e = c.entry
    if out.json:
        out.emit(
            "change",
            change=c.change,
            what=c.what,
            path=path_text(e.path),
            kind=e.kind,
            old_size=c.old.size if c.old is not None else None,
            new_size=c.new.size if c.new is not None else None,
        )
    else:
        slash = "/" if e.kind == model.DIR and e.path != model.ROOT else ""
        out.line(f"{c.mark}  {path_text(e.path)}{slash}")
