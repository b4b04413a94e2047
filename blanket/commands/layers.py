"""``blanket layers``: the layers of the repository."""

from __future__ import annotations

import argparse

from blanket.commands.common import open_repo
from blanket.errors import EXIT_OK
from blanket.expiry import current_expire_below
from blanket.layers import history, summarize
from blanket.ui import Output, path_text
from blanket.units import human_size, show_time

HELP = "list the layers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, out: Output) -> int:
    repo = open_repo(args)
    repo.refresh()
    summaries = summarize(repo.headers)
    missing = history(summaries, list(repo.lost_versions()))
    expiring = current_expire_below(repo.headers)
    rows = [
        {
            "layer": s.layer,
            "state": "complete" if s.complete else "partial",
            "kind": "full" if s.full else "incremental",
            "expiring": "yes" if s.layer < expiring else "no",
            "history": (
                missing[s.layer]
                if out.json
                else (f"missing {missing[s.layer]}" if missing[s.layer] else "exact")
            ),
            "first": show_time(s.first),
            "last": show_time(s.last),
            "packs": s.packs,
            "bytes": s.size if out.json else human_size(s.size),
            "clock": "(end)" if s.complete else path_text(s.clock),
        }
        for s in summaries
    ]
    columns = ["layer", "state", "kind", "expiring", "history", "first", "last", "packs"]
    out.table(rows, columns + ["bytes", "clock"])
    if not rows:
        out.line("no layers yet: run 'blanket backup'")
    return EXIT_OK
