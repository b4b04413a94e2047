"""``blanket sync``: copy committed objects to another store, verified, in commit order."""

from __future__ import annotations

import argparse

from blanket.commands.common import backend_for, gnupghome, passphrase
from blanket.errors import EXIT_OK
from blanket.repo import Repository
from blanket.sync import sync
from blanket.ui import Output
from blanket.units import human_size

HELP = "copy the committed objects a second store lacks (it becomes a replica)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="URL")
    p.add_argument("--to", dest="target", required=True, metavar="URL")


def run(args: argparse.Namespace, out: Output) -> int:
    src = Repository.open(backend_for(args, args.source), gnupghome(args), passphrase(args))
    result = sync(src, backend_for(args, args.target))
    out.summary(
        f"{args.target}: {result.commits_copied} commit(s) copied, "
        f"{result.data_repaired} damaged object(s) replaced, "
        f"{result.logs_copied} run record(s) copied, {human_size(result.bytes_copied)} sent"
        + ("; it is now a replica" if result.created else ""),
        commits_copied=result.commits_copied,
        logs_copied=result.logs_copied,
        data_repaired=result.data_repaired,
        bytes=result.bytes_copied,
        created=result.created,
    )
    return EXIT_OK
