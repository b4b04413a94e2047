"""``blanket cat PATH``: one file's content on stdout, checked against its SHA-256."""

from __future__ import annotations

import argparse
import sys

from blanket import model
from blanket.commands.common import at, open_repo
from blanket.errors import EXIT_OK
from blanket.restore.dump import cat
from blanket.ui import Output

HELP = "write one file's content to stdout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the file, relative to the backed-up folder")
    p.add_argument("--at", help="layer number or ISO time")


def run(args: argparse.Namespace, out: Output) -> int:
    out.data_on_stdout()
    layer, when = at(args.at)
    path = model.normalize_user_path(args.path)
    repo = open_repo(args, reads="cat")
    size = cat(repo, path, layer, when, sys.stdout.buffer)
    if out.json:  # on stderr: stdout holds the content
        out.summary("", path=args.path, bytes=size)
    elif out.record is not None:
        out.record.note_summary({"path": args.path, "bytes": size})
    return EXIT_OK
