"""``blanket layers``: the layers of the repository."""

from __future__ import annotations

import argparse

from blanket.commands.common import open_repo
from blanket.errors import EXIT_OK
from blanket.layers import summarize
from blanket.ui import Output, path_text
from blanket.units import human_size, show_time

HELP = "list the layers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
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
