"""What every command shares: the common options, opening the repository, ``--at``."""

from __future__ import annotations

import argparse
import os

from blanket.backends import open_backend
from blanket.crypto import read_passphrase_file
from blanket.errors import UsageError
from blanket.repo import Repository
from blanket.units import parse_at


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors raised as ``UsageError`` (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def common_options() -> Parser:
    """The options every command takes, accepted after the command name."""
    p = Parser(add_help=False)
    p.add_argument("--repo", "-r", action="append", help="repository URL (or BLANKET_REPO)")
    p.add_argument("--gnupghome", help="gpg home directory holding the key (or GNUPGHOME)")
    p.add_argument("--passphrase-file", help="file whose first line is the passphrase")
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing on success")
    return p


def repo_urls(args: argparse.Namespace) -> list[str]:
    urls = args.repo or ([os.environ["BLANKET_REPO"]] if os.environ.get("BLANKET_REPO") else [])
    if not urls:
        raise UsageError("no repository given; pass --repo URL or set BLANKET_REPO")
    return [str(u) for u in urls]


def repo_url(args: argparse.Namespace) -> str:
    urls = repo_urls(args)
    if len(urls) > 1:
        raise UsageError("this command takes one --repo")
    return urls[0]


def passphrase(args: argparse.Namespace) -> str | None:
    path = args.passphrase_file or os.environ.get("BLANKET_PASSPHRASE_FILE")
    return read_passphrase_file(path) if path else None


def open_repo(args: argparse.Namespace, url: str | None = None) -> Repository:
    return Repository.open(open_backend(url or repo_url(args)), args.gnupghome, passphrase(args))


def at(text: str | None) -> tuple[int | None, int | None]:
    """``--at``: ``(layer, None)``, ``(None, time_ns)`` or ``(None, None)``."""
    return parse_at(text) if text else (None, None)
