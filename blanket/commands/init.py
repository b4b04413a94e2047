"""``blanket init``: create a repository."""

from __future__ import annotations

import argparse
import time

from blanket.backends import open_backend
from blanket.commands.common import passphrase, repo_url
from blanket.crypto import PUBKEY, SYMMETRIC, KeySpec
from blanket.errors import EXIT_OK, UsageError
from blanket.repo import init_repository
from blanket.ui import Output

HELP = "create a repository"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="fingerprint (or user id) of the gpg key to encrypt and sign with")


def run(args: argparse.Namespace, out: Output) -> int:
    secret = passphrase(args)
    if bool(args.key) == bool(secret):
        raise UsageError("init needs exactly one of --key FINGERPRINT or --passphrase-file FILE")
    spec = KeySpec(SYMMETRIC, "", secret) if secret else KeySpec(PUBKEY, args.key)
    url = repo_url(args)
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
